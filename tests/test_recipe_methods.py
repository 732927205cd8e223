"""The quantize stage's methods through run.sh on the tiny recipe (tests/recipe.py): two-stage searches, PTQ,
reruns and kills of the stage, two training processes through ESPnet's launcher and slurm.pl."""
import json
import os
import subprocess

import pytest
import yaml

from mpq_plugins.eval.training_log import read_epochs
from mpq_plugins.quant.packing import read_packed
from tests.conftest import ROOT
from tests.recipe import ARGS, kill_when, pytestmark, recipe, run  # noqa: F401


def test_two_stage_mixed_precision_searches_then_trains(recipe):
    confs = " ".join(f"{ROOT}/tests/conf/quant/mpq_{m}_tiny.yaml" for m in ("kl", "supernet"))
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", confs)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for m, budget in (("kl", 11.6), ("supernet", 12.0)):
        exp = recipe / "exp" / f"asr_train_tiny_mpq_{m}_tiny"
        search = json.loads((exp / "search.json").read_text())
        assert search["method"] == m
        size = json.loads((exp / "packed.size.json").read_text())
        assert size["avg_bits_per_param"] <= budget
        assert size["bits_per_layer"] == search["bits"]             # stage 2 trained the searched bits
        log = json.loads((exp / "compression_time.json").read_text())
        whats = [e["what"] for e in log]
        assert whats == (["search", "train", "pack"] if m == "kl" else ["search", "search", "train", "pack"])
        record = yaml.safe_load((exp / "system.yaml").read_text())
        assert record["method"] == m and record["bits_per_layer"] == search["bits"]
        assert record["compression_time"]["search_s"] == pytest.approx(
            sum(e["wall_s"] for e in log if e["what"] == "search"), abs=0.02)
    assert (recipe / "exp" / "asr_train_tiny_mpq_supernet_tiny" / "search" / "latest.pth").exists()


def test_post_training_conf_quantizes_without_training(recipe):
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", f"{ROOT}/conf/quant/w8_ptq.yaml")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    exp = recipe / "exp" / "asr_train_tiny_w8_ptq"
    assert not (exp / "train.log").exists()                         # the trainer never ran
    size = json.loads((exp / "packed.size.json").read_text())
    assert size["avg_weight_bits"] == 8 and set(size["bits_per_layer"].values()) == {8}
    log = json.loads((exp / "compression_time.json").read_text())
    assert [e["what"] for e in log] == ["train", "pack"]
    assert yaml.safe_load((exp / "system.yaml").read_text())["description"] == "uniform PTQ, weights"
    model_mtime = (exp / "valid.acc.best.pth").stat().st_mtime_ns
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", f"{ROOT}/conf/quant/w8_ptq.yaml")
    assert r.returncode == 0 and (exp / "valid.acc.best.pth").stat().st_mtime_ns == model_mtime   # up to date: kept


def test_rerun_quantize_stage_keeps_what_is_done_and_counts_it_once(recipe):
    exp = recipe / "exp" / "asr_train_tiny_w4"
    model_before = (exp / "valid.acc.best.pth").read_bytes()
    packed_mtime = (exp / "packed.safetensors").stat().st_mtime_ns
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", f"{ROOT}/conf/quant/w4.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train_config.yaml is up to date" in r.stdout and not (exp / "train.log.1").exists()   # not retrained
    assert (exp / "valid.acc.best.pth").read_bytes() == model_before
    log = json.loads((exp / "compression_time.json").read_text())
    assert [e["what"] for e in log] == ["train", "pack"]                  # the work, once
    assert (exp / "packed.safetensors").stat().st_mtime_ns == packed_mtime  # newer than the model: kept


def test_quantize_stage_killed_midway_reruns_cleanly(recipe, tmp_path):
    conf = tmp_path / "w3_killed.yaml"
    conf.write_text(f"method: qat\nbase: {ROOT}/conf/quant/w3.yaml\n")
    exp = recipe / "exp" / "asr_train_tiny_w3_killed"
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", "6", "--stop_stage", "6", "--quant_confs", str(conf)]
    err = []
    rc = kill_when(cmd, recipe, lambda: (exp / "train.log").exists() and "epoch started" in (exp / "train.log").read_text(),
                   sig=__import__("signal").SIGINT, output=err)                  # a Ctrl-C
    assert rc != 0 and not (exp / "packed.safetensors").exists() and not (exp / "system.yaml").exists()
    assert "Traceback" not in err[0] and "timed: train: interrupted after" in err[0], err[0][-2000:]
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", str(conf))
    assert r.returncode == 0, r.stderr[-2000:]
    log = json.loads((exp / "compression_time.json").read_text())
    # cut before its first checkpoint, the epoch starts over: the cut run is not charged (timed --resumable)
    assert "1 cut run(s) not counted" in r.stderr
    assert [e["what"] for e in log] == ["train", "pack"] and log[0]["rc"] == 0
    record = yaml.safe_load((exp / "system.yaml").read_text())
    assert record["weight_bits"] == 3 and record["compression_time"]["train_s"] == pytest.approx(log[0]["wall_s"], abs=0.02)

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

