"""The compression-time log: a step cut before it could be resumed is not charged to the method."""
import json
import subprocess
import sys


def timed(log, what, *args, resumable=None):
    extra = ["--resumable", str(resumable)] if resumable else []
    return subprocess.run([sys.executable, "-m", "mpq_plugins.bin.timed", "--log", str(log), "--what", what, *extra,
                           "--", *args], capture_output=True, text=True)


def test_a_step_that_starts_over_drops_its_cut_runs_and_one_that_resumes_keeps_them(tmp_path):
    log, exp = tmp_path / "compression_time.json", tmp_path / "exp"
    exp.mkdir()
    assert timed(log, "search", "true").returncode == 0
    assert timed(log, "train", "false").returncode == 1                       # cut (or failed) before a checkpoint
    r = timed(log, "train", "true", resumable=exp)                            # starts over: the cut run is dropped
    assert r.returncode == 0 and "1 cut run(s) not counted" in r.stderr
    assert [(e["what"], e["rc"]) for e in json.loads(log.read_text())] == [("search", 0), ("train", 0)]
    assert timed(log, "train", "false").returncode == 1
    (exp / "checkpoint.pth").write_bytes(b"x")                                # ESPnet saved an epoch: it resumes
    assert timed(log, "train", "true", resumable=exp).returncode == 0
    assert [(e["what"], e["rc"]) for e in json.loads(log.read_text())] == [("search", 0), ("train", 0), ("train", 1),
                                                                            ("train", 0)]
