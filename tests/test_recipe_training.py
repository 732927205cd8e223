"""Training beyond one process and one seed through run.sh on the tiny recipe (tests/recipe.py): two training
processes through ESPnet's launcher and slurm.pl, and a system per seed pooled by the report."""
import json
import os
import subprocess

import yaml

from mpq_plugins.eval.training_log import read_epochs
from mpq_plugins.quant.packing import read_packed
from tests.conftest import ROOT
from tests.recipe import ARGS, pytestmark, recipe, run  # noqa: F401


FAKE_SBATCH = """#!/usr/bin/env bash
# Stand-in for "sbatch --wait": runs the job script here, with the job's node count for srun.
nodes=1 script=""
for a in "$@"; do
  case "$a" in --nodes=*) nodes=${a#--nodes=} ;; -*) ;; *) script=$a ;; esac
done
echo 4242
SLURM_JOB_ID=4242 SLURM_NNODES=$nodes bash "$script"
"""
FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun inside a job: the command once per node, as processes here, with Slurm's variables.
[ "$1" = --export=ALL ] && shift
n=${SLURM_NNODES:-1} pids=""
for i in $(seq 0 $((n - 1))); do
  SLURM_PROCID=$i SLURM_NODEID=$i SLURM_LOCALID=0 SLURM_NTASKS=$n SLURM_STEP_NUM_NODES=$n \\
    SLURM_STEP_NODELIST=localhost SLURM_STEP_ID=0 "$@" &
  pids="$pids $!"
done
rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc
"""


def test_two_process_training_through_espnets_launcher_and_slurm_pl(recipe, tmp_path):
    """README's Slurm command on a CPU machine: ESPnet's launcher -> utils/slurm.pl -> (stub) sbatch ->
    (stub) srun -> two training processes on the gloo backend, for QAT and for one-stage MPQ."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    confs = {}
    for name, base in (("w4_ddp", f"{ROOT}/conf/quant/w4.yaml"),
                       ("mpq_one_stage_ddp", f"{ROOT}/tests/conf/quant/mpq_one_stage_tiny.yaml")):
        confs[name] = tmp_path / f"{name}.yaml"
        method = "qat" if name == "w4_ddp" else "one_stage"
        confs[name].write_text(f"method: {method}\nbase: {base}\n")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "cmd_backend": "slurm"}
    r = subprocess.run([os.path.join(ROOT, "run.sh"), *ARGS, "--stage", "6", "--stop_stage", "6", "--ngpu", "0",
                        "--num_nodes", "2", "--quant_confs", " ".join(map(str, confs.values()))],
                       cwd=recipe, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in confs:
        exp = recipe / "exp" / f"asr_train_tiny_{name}"
        log = (exp / "train.log").read_text()
        assert "srun --export=ALL" in log and ":0/2] " in log, log[-2000:]   # rank 0 of a world of 2 (rank 1 logs warnings only)
        twin = recipe / "exp" / f"asr_train_tiny_{'w4' if name == 'w4_ddp' else 'mpq_one_stage_tiny'}"   # one process
        single = yaml.safe_load((twin / "system.yaml").read_text())
        record = yaml.safe_load((exp / "system.yaml").read_text())
        _, meta, _ = read_packed(exp / "packed.safetensors")                 # the same packed format
        assert meta["format"] == read_packed(recipe / "exp" / "asr_train_tiny_w4" / "packed.safetensors")[1]["format"]
        assert record["method"] == single["method"] and set(record["bits_per_layer"]) == set(single["bits_per_layer"])
        # as good as one process: the same updates on the same batches (each rank a half, gradients averaged),
        # so the validation loss agrees up to BatchNorm's per-rank statistics and, for one-stage, the Gumbel noise
        (two,) = read_epochs(exp / "train.log")[-1:]
        (one,) = read_epochs(twin / "train.log")[-1:]
        assert two["epoch"] == one["epoch"] and abs(two["valid"]["loss"] / one["valid"]["loss"] - 1) < 0.03, (one, two)
        if name == "w4_ddp":
            assert record["sizes"]["disk_bytes"] == single["sizes"]["disk_bytes"]
        else:
            assert 32 / record["sizes"]["compression_ratio"] <= 11.6 and json.loads((exp / "mixed_precision.json").read_text())["updates"] >= 2


def test_seeds_train_a_system_per_seed_and_the_report_pools_them(recipe):
    r = run(recipe, "--stage", "6", "--quant_confs", f"{ROOT}/conf/quant/w4.yaml", "--seeds", "1 2",
            "--quant_test_sets", "test", "--acoustic_config", "")
    assert r.returncode == 0, r.stderr[-2000:]
    one = yaml.safe_load((recipe / "exp" / "asr_train_tiny_w4" / "system.yaml").read_text())
    two = yaml.safe_load((recipe / "exp" / "asr_train_tiny_w4_seed2" / "system.yaml").read_text())
    assert (one["seed"], two["seed"]) == (1, 2)
    results = (recipe / "RESULTS.md").read_text()
    row = next(line for line in results.split("## Seeds and intervals (test)")[1].splitlines()
               if line.startswith("|asr_train_tiny_w4|"))
    assert row.split("|")[3] == "1, 2" and " of 2|" in row
