"""The recipe the recipe tests share: run.sh's every stage on a tiny synthetic corpus with a tiny Conformer,
built once per test run (the first test file to need it builds it, under a lock that every test worker sees)
and copied into a directory of its own for each test file, which may then change it as it likes."""
import contextlib
import fcntl
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

TOOLS = ("espeak-ng", "flite", "festival", "sox")
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS) or not os.path.exists("/usr/lib/sctk/bin/sclite"),
                                reason="Debian tools missing (run tools/setup.sh)")

DECODE = "decode_tiny_packed"
SETS = ("dev", "test", "test_unseen_voice", "test_perturbed")
QSETS = ("test",)               # the quantized systems decode these (run.sh --quant_test_sets)
# the float control (conf/quant/fp32_cont.yaml) is a conf like w4 with no quantization section; the
# report's use of it is tested in tests/test_report.py
SYSTEMS = ("asr_train_tiny", "asr_train_tiny_w4", "asr_train_tiny_mpq_one_stage_tiny")
QUANT_CONFS = f"{ROOT}/conf/quant/w4.yaml {ROOT}/tests/conf/quant/mpq_one_stage_tiny.yaml"


ARGS = ("--local_data_opts", "--n_train 24 --n_dev 6 --n_test 6 --n_unseen 6 --n_perturbed 6",
        "--asr_config", os.path.join(ROOT, "tests/conf/train_tiny.yaml"),
        "--inference_config", os.path.join(ROOT, "tests/conf/decode_tiny.yaml"),
        "--acoustic_config", os.path.join(ROOT, "tests/conf/decode_tiny_acoustic.yaml"),
        "--lm_config", os.path.join(ROOT, "tests/conf/train_lm_tiny.yaml"), "--lm_train_text", "data/train/text",
        "--finetune_config", os.path.join(ROOT, "tests/conf/finetune_tiny.yaml"), "--quant_confs", QUANT_CONFS,
        "--quant_test_sets", " ".join(QSETS), "--nj", "1")


def run(cwd, *args):
    return subprocess.run([os.path.join(ROOT, "run.sh"), *ARGS, *args], cwd=cwd, capture_output=True, text=True)


def shared_dir(tmp_path_factory):
    """The directory every worker of this test run sees (pytest-xdist's workers each have a base under it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    built = shared_dir(tmp_path_factory) / "recipe_built"
    with open(f"{built}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # one worker builds it; the others wait for it here
        failed = built.with_suffix(".failed")
        if failed.exists():
            pytest.fail(f"the shared recipe failed to build (in another test file):\n{failed.read_text()}")
        if not (built / "RESULTS.md").exists():
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir()
            r = run(built)
            if r.returncode != 0:
                failed.write_text(r.stdout[-3000:] + r.stderr[-3000:])
                pytest.fail(failed.read_text())
    d = tmp_path_factory.mktemp("recipe")
    shutil.copytree(built, d, symlinks=True, dirs_exist_ok=True)   # times kept: stages see what is up to date
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus and its tokens alone (stages 1-2), for a test file that runs while the recipe builds."""
    d = tmp_path_factory.mktemp("corpus")
    r = run(d, "--stop_stage", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d


@contextlib.contextmanager
def own_audio(recipe, data_set):
    """The first utterance of data/<data_set> pointed at a copy of its audio in this recipe, yielded, for a test
    to spoil: every copy of the recipe reads the built one's audio files (its wav.scp paths are absolute), and
    other test files decode them meanwhile. wav.scp is put back as it was, its time too."""
    import shutil
    scp = recipe / "data" / data_set / "wav.scp"
    saved, times = scp.read_bytes(), (scp.stat().st_atime_ns, scp.stat().st_mtime_ns)
    lines = saved.decode().splitlines(keepends=True)
    utt, path = lines[0].split(maxsplit=1)
    own = recipe / "own_audio" / os.path.basename(path.strip())
    own.parent.mkdir(exist_ok=True)
    shutil.copy2(path.strip(), own)
    scp.write_text(f"{utt} {own}\n" + "".join(lines[1:]))
    os.utime(scp, ns=times)                       # the data dir is the same to the stages' up-to-date checks
    try:
        yield str(own)
    finally:
        scp.write_bytes(saved)
        os.utime(scp, ns=times)


def kill_when(cmd, cwd, ready, timeout=180, sig=None, output=None, poll=0.02):
    """Start cmd in its own process group, send the whole group sig (SIGTERM: a kill) once ready() is true
    (asked every poll seconds); its return code (and its stderr in output, a list, when given). SIGINT (a
    Ctrl-C) is set back to its default in the group first: a process started in the background, as a CI
    job may be, ignores it."""
    import signal
    import time
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not ready():
        time.sleep(poll)
    if p.poll() is None:
        os.killpg(p.pid, sig or signal.SIGTERM)
    _, err = p.communicate(timeout=timeout)
    if output is not None:
        output.append(err.decode(errors="replace"))
    return p.returncode


STAGE_OUTPUTS = {2: ("data/token_list/*/*",), 4: ("exp/lm_word_3gram/*",),
                 8: ("exp/*/" + DECODE + "/*/score_*/*", "exp/*/" + DECODE + "/*/scoring.json"),
                 9: ("RESULTS.md", "results/*")}
STAGE_TEMPORARIES = {2: "data/token_list/*.tmp", 4: "exp/lm_word_3gram/*.tmp",
                     8: "exp/*/" + DECODE + "/*/score_*.tmp", 9: "results/*.tmp"}


def stage_outputs(recipe, stage):
    import re
    out = {}
    for pattern in STAGE_OUTPUTS[stage]:
        for p in recipe.glob(pattern):
            if p.is_file() and not any(part.endswith(".tmp") for part in p.relative_to(recipe).parts):
                data = p.read_bytes()
                out[str(p.relative_to(recipe))] = re.sub(rb'creation_date="[^"]*"|- date: `[^`]*`', b"", data)
    return out
