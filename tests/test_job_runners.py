"""Tests for the recipe job runners: utils/run.pl, utils/slurm.pl and
utils/parse_options.sh.  They only need bash and perl (no Slurm: slurm.pl is
checked in dry-run mode and against a tiny fake ``sbatch``)."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_PL = ROOT / "utils" / "run.pl"
SLURM_PL = ROOT / "utils" / "slurm.pl"
PARSE_OPTIONS = ROOT / "utils" / "parse_options.sh"


def run(args, cwd, env=None, timeout=30):
    full_env = dict(os.environ)
    full_env.pop("SLURM_PL_DRYRUN", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=full_env, capture_output=True,
        text=True, timeout=timeout,
    )


def run_pl(tmp_path, *args, **kw):
    return run(["perl", RUN_PL, *args], cwd=tmp_path, **kw)


def slurm_pl(tmp_path, *args, dry=True, **kw):
    env = kw.pop("env", {}) or {}
    if dry:
        env["SLURM_PL_DRYRUN"] = "1"
    return run(["perl", SLURM_PL, *args], cwd=tmp_path, env=env, **kw)


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path", [RUN_PL, SLURM_PL, PARSE_OPTIONS])
def test_scripts_exist_and_are_executable(path):
    assert path.is_file()
    assert path.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("path", [RUN_PL, SLURM_PL])
def test_perl_syntax(path):
    r = subprocess.run(["perl", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------
# run.pl
# --------------------------------------------------------------------------

def test_run_pl_job_array_writes_logs_and_substitutes(tmp_path):
    r = run_pl(tmp_path, "JOB=1:3", "exp/log/work.JOB.log",
               "echo", "task", "JOB", "two words", ">", "out.JOB.txt",
               "&&", "echo", "done", "JOB")
    assert r.returncode == 0, r.stderr
    for i in (1, 2, 3):
        log = (tmp_path / f"exp/log/work.{i}.log").read_text()
        lines = log.splitlines()
        assert lines[0] == f"# echo task {i} 'two words' > out.{i}.txt && echo done {i}"
        assert lines[1].startswith("# Started at ")
        assert f"done {i}" in lines
        assert lines[-2].startswith("# Accounting: time=")
        assert re.fullmatch(r"# Accounting: time=\d+ threads=1", lines[-2])
        assert re.fullmatch(r"# Ended \(code 0\) at .+", lines[-1])
        assert (tmp_path / f"out.{i}.txt").read_text() == f"task {i} two words\n"
    assert not (tmp_path / "exp/log/work.JOB.log").exists()


def test_run_pl_single_quoted_command_with_pipe(tmp_path):
    r = run_pl(tmp_path, "log/p.log", "printf 'b\\na\\n' | sort | tr a-z A-Z > sorted.txt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sorted.txt").read_text() == "A\nB\n"
    assert (tmp_path / "log/p.log").read_text().splitlines()[0] == \
        "# printf 'b\\na\\n' | sort | tr a-z A-Z > sorted.txt"


def test_run_pl_stdout_and_stderr_go_to_log(tmp_path):
    r = run_pl(tmp_path, "a.log", "echo to-out; echo to-err >&2")
    assert r.returncode == 0
    log = (tmp_path / "a.log").read_text()
    assert "to-out" in log and "to-err" in log
    assert "to-out" not in r.stdout + r.stderr


def test_run_pl_failure(tmp_path):
    r = run_pl(tmp_path, "JOB=1:3", "log/f.JOB.log", "test JOB -ne 2 || exit 7")
    assert r.returncode == 1
    assert "run.pl: 1 / 3 failed, log is in log/f.JOB.log" in r.stderr
    assert (tmp_path / "log/f.2.log").read_text().splitlines()[-1].startswith("# Ended (code 7) at ")
    assert (tmp_path / "log/f.1.log").read_text().splitlines()[-1].startswith("# Ended (code 0) at ")


def test_run_pl_single_job_failure(tmp_path):
    r = run_pl(tmp_path, "x.log", "false")
    assert r.returncode == 1
    assert "1 / 1 failed, log is in x.log" in r.stderr


def order_command():
    return "echo start JOB >> order.txt; sleep 0.3; echo end JOB >> order.txt"


def test_run_pl_max_jobs_run_1_is_sequential(tmp_path):
    r = run_pl(tmp_path, "--max_jobs_run", "1", "JOB=1:3", "log/s.JOB.log", order_command())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "order.txt").read_text().split("\n")[:-1] == [
        "start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]


def test_run_pl_max_jobs_run_3_is_parallel(tmp_path):
    r = run_pl(tmp_path, "--max-jobs-run=3", "JOB=1:3", "log/s.JOB.log", order_command())
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "order.txt").read_text().splitlines()
    assert sorted(lines[:3]) == ["start 1", "start 2", "start 3"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_run_pl_default_runs_jobs_side_by_side_despite_omp_num_threads(tmp_path):
    # decode.sh exports OMP_NUM_THREADS=1 for its jobs; nproc then reports 1, and the jobs ran one at a time
    r = run_pl(tmp_path, "JOB=1:2", "log/s.JOB.log", order_command(), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "order.txt").read_text().splitlines()
    assert sorted(lines[:2]) == ["start 1", "start 2"]


def test_run_pl_accepts_cluster_options(tmp_path):
    r = run_pl(tmp_path, "--gpu", "0", "--mem=4G", "--num-threads", "4", "--time", "1:00:00",
               "--name", "x", "--config", "conf/none.conf", "--num_nodes", "1",
               "JOB=1:2", "--gpu=1", "log/o.JOB.log", "echo", "JOB")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "log/o.2.log").read_text().splitlines()
    assert "2" in lines
    assert re.fullmatch(r"# Accounting: time=\d+ threads=4", lines[-2])


def test_run_pl_other_variable_name_and_range(tmp_path):
    r = run_pl(tmp_path, "SPLIT=3:4", "log/s.SPLIT.log", "echo", "part-SPLIT")
    assert r.returncode == 0, r.stderr
    assert "part-3" in (tmp_path / "log/s.3.log").read_text()
    assert "part-4" in (tmp_path / "log/s.4.log").read_text()
    assert not (tmp_path / "log/s.1.log").exists()


@pytest.mark.parametrize("args, message", [
    (["--foo", "1", "x.log", "true"], "run.pl: unknown option --foo"),
    (["--gpu"], "option --gpu needs a value"),
    (["--gpu", "two", "x.log", "true"], "expects a whole number"),
    (["JOB=1:2", "x.log", "true"], "does not contain JOB"),
    (["x.log"], "Usage"),
])
def test_run_pl_usage_errors(tmp_path, args, message):
    r = run_pl(tmp_path, *args)
    assert r.returncode == 1
    assert message in r.stderr
    assert not (tmp_path / "x.log").exists()


# --------------------------------------------------------------------------
# parse_options.sh
# --------------------------------------------------------------------------

def options_script(tmp_path):
    script = tmp_path / "demo.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        "nj=4\n"
        "stage_name=prep\n"
        "use_gpu=false\n"
        "lm_weight=0.3\n"
        "help_message=\"Usage: demo.sh [options] <in> <out>\"\n"
        f". {PARSE_OPTIONS}\n"
        "echo \"nj=$nj stage_name=$stage_name use_gpu=$use_gpu lm_weight=$lm_weight\"\n"
        "echo \"nargs=$#\"\n"
        "for a in \"$@\"; do echo \"arg=$a\"; done\n"
    )
    return script


def parse(tmp_path, *args):
    return run(["bash", options_script(tmp_path), *args], cwd=tmp_path)


def test_parse_options_sets_known_variables(tmp_path):
    r = parse(tmp_path, "--nj", "8", "--stage-name", "train", "--use_gpu", "true",
              "--lm-weight=0.5", "in dir", "--not-an-option", "out")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "nj=8 stage_name=train use_gpu=true lm_weight=0.5"
    assert out[1:] == ["nargs=3", "arg=in dir", "arg=--not-an-option", "arg=out"]


def test_parse_options_defaults_and_double_dash(tmp_path):
    r = parse(tmp_path, "--", "--nj", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "nj=4 stage_name=prep use_gpu=false lm_weight=0.3", "nargs=2", "arg=--nj", "arg=x"]


def test_parse_options_value_with_spaces_and_equals(tmp_path):
    r = parse(tmp_path, "--stage-name=a=b c", "--nj", "--x y")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "nj=--x y stage_name=a=b c use_gpu=false lm_weight=0.3"


@pytest.mark.parametrize("args, message", [
    (["--no-such-thing", "1", "a"], "demo.sh: unknown option --no-such-thing"),
    (["--help_messagex", "x"], "unknown option --help_messagex"),
    (["--__po_var", "x"], "unknown option --__po_var"),
    (["--nj"], "option --nj needs a value"),
    (["--use-gpu", "yes"], "expects true or false"),
])
def test_parse_options_errors(tmp_path, args, message):
    r = parse(tmp_path, *args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "nj=" not in r.stdout


def test_parse_options_help(tmp_path):
    for flag in ("--help", "-h"):
        r = parse(tmp_path, "--nj", "2", flag)
        assert r.returncode == 0
        assert r.stdout.strip() == "Usage: demo.sh [options] <in> <out>"


# --------------------------------------------------------------------------
# slurm.pl
# --------------------------------------------------------------------------

def test_slurm_pl_dry_run_array_job(tmp_path):
    r = slurm_pl(tmp_path, "--gpu", "2", "--mem", "8G", "--time=2:00:00", "--name", "decode_test",
                 "--max-jobs-run", "2", "JOB=1:3", "exp/dec/log/decode.JOB.log",
                 "python", "decode.py", "--keys", "keys.JOB.scp")
    assert r.returncode == 0, r.stderr
    sbatch_line = next(line for line in r.stdout.splitlines() if line.startswith("sbatch "))
    words = sbatch_line.split()
    assert "--wait" in words
    assert "--array=1-3%2" in words
    assert "--gres=gpu:2" in words
    assert "--mem=8G" in words
    assert "--time=2:00:00" in words
    assert "--job-name=decode_test" in words
    assert "--cpus-per-task=1" in words
    assert words[-1] == "exp/dec/log/q/decode.sh"
    script = tmp_path / "exp/dec/log/q/decode.sh"
    assert script.is_file()
    text = script.read_text()
    assert text in r.stdout
    assert "SLURM_ARRAY_TASK_ID" in text
    assert "python decode.py --keys keys.JOB.scp" in text
    # nothing was run
    assert not (tmp_path / "exp/dec/log/decode.1.log").exists()


def test_slurm_pl_dry_run_espnet_launcher_form(tmp_path):
    r = slurm_pl(tmp_path, "--gpu", "2", "--num_threads", "2", "--num_nodes", "2",
                 "exp/asr/train.log", "srun", "--export=ALL", "python", "-m",
                 "espnet2.bin.asr_train", "--ngpu", "2", "--output_dir", "exp/asr")
    assert r.returncode == 0, r.stderr
    sbatch_line = next(line for line in r.stdout.splitlines() if line.startswith("sbatch "))
    words = sbatch_line.split()
    assert "--nodes=2" in words
    assert "--ntasks-per-node=1" in words
    assert "--gres=gpu:2" in words
    assert "--cpus-per-task=2" in words
    assert "--job-name=train" in words
    assert not any(w.startswith("--array") for w in words)
    assert ("srun --export=ALL python -m espnet2.bin.asr_train --ngpu 2 --output_dir exp/asr"
            in r.stdout)


def test_slurm_pl_no_gpu_no_gres_and_config(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/slurm.conf").write_text(
        "# test config\n"
        "extra --account=asr\n"
        "cpu_extra --partition=cpu\n"
        "gpu_extra --partition=gpu\n"
        "mem --mem-per-cpu=$0\n"
    )
    r = slurm_pl(tmp_path, "--gpu", "0", "--mem", "2G", "log/a.log", "true")
    assert r.returncode == 0, r.stderr
    words = next(line for line in r.stdout.splitlines() if line.startswith("sbatch ")).split()
    assert not any(w.startswith("--gres") for w in words)
    assert "--mem-per-cpu=2G" in words and "--mem=2G" not in words
    assert "--account=asr" in words and "--partition=cpu" in words
    assert "--partition=gpu" not in words


def test_slurm_pl_errors(tmp_path):
    r = slurm_pl(tmp_path, "--bogus", "1", "log/a.log", "true")
    assert r.returncode == 1 and "slurm.pl: unknown option --bogus" in r.stderr
    r = slurm_pl(tmp_path, "JOB=1:2", "log/a.log", "true")
    assert r.returncode == 1 and "does not contain JOB" in r.stderr


def test_slurm_pl_without_sbatch(tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    perl = shutil.which("perl")
    r = run([perl, SLURM_PL, "log/a.log", "true"], cwd=tmp_path, env={"PATH": str(empty_dir)})
    assert r.returncode == 1
    assert "'sbatch' was not found on PATH" in r.stderr
    assert not (tmp_path / "log/a.log").exists()


FAKE_SBATCH = """#!/usr/bin/env bash
# Minimal stand-in for "sbatch --wait": runs the job script here, once per array task.
array="" script=""
for a in "$@"; do
  case "$a" in
    --array=*) array=${a#--array=}; array=${array%%\\%*} ;;
    -*) ;;
    *) script=$a ;;
  esac
done
echo "$@" > sbatch_args.txt
echo 4242
rc=0
if [ -n "$array" ]; then
  for i in $(seq "${array%-*}" "${array#*-}"); do
    SLURM_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i bash "$script" || rc=1
  done
else
  SLURM_JOB_ID=4242 bash "$script" || rc=$?
fi
exit $rc
"""


def fake_sbatch_env(tmp_path):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    sb = bindir / "sbatch"
    sb.write_text(FAKE_SBATCH)
    sb.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def test_slurm_pl_job_script_runs_tasks(tmp_path):
    env = fake_sbatch_env(tmp_path)
    r = slurm_pl(tmp_path, "JOB=1:3", "--num-threads", "3", "log/t.JOB.log",
                 "echo", "task JOB", "|", "tr", "a-z", "A-Z", dry=False, env=env)
    assert r.returncode == 0, r.stderr
    assert "--array=1-3" in (tmp_path / "sbatch_args.txt").read_text().split()
    for i in (1, 2, 3):
        lines = (tmp_path / f"log/t.{i}.log").read_text().splitlines()
        assert lines[0] == f"# echo 'task {i}' | tr a-z A-Z"
        assert lines[1].startswith("# Started at ")
        assert f"TASK {i}" in lines
        assert re.fullmatch(r"# Accounting: time=\d+ threads=3", lines[-2])
        assert lines[-1].startswith("# Ended (code 0) at ")


def test_slurm_pl_reports_failed_tasks(tmp_path):
    env = fake_sbatch_env(tmp_path)
    r = slurm_pl(tmp_path, "JOB=1:3", "log/t.JOB.log", "test JOB -lt 2",
                 dry=False, env=env)
    assert r.returncode == 1
    assert "slurm.pl: 2 / 3 failed, log is in log/t.JOB.log" in r.stderr
