"""run.sh's stages killed midway on the tiny recipe (tests/recipe.py): the data, statistics and training stages
and the short ones; a rerun resumes or restarts cleanly."""
import io
import os
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.recipe import (ARGS, DECODE, SETS, STAGE_TEMPORARIES, kill_when, pytestmark, recipe, run,  # noqa: F401
                          stage_outputs)


def test_data_stage_killed_midway_reruns_to_the_same_corpus(recipe, tmp_path):
    import soundfile
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", "1", "--stop_stage", "1"]
    wavs = tmp_path / "data" / "local" / "wav"
    rc = kill_when(cmd, tmp_path, lambda: wavs.exists() and any(wavs.rglob("*.wav")))   # synthesis under way
    assert rc != 0 and not (tmp_path / "data" / "test" / "text").exists()
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for d in SETS:
        for name in ("text", "utt2spk", "spk2utt"):
            assert (tmp_path / "data" / d / name).read_text() == (recipe / "data" / d / name).read_text()
        for line in (tmp_path / "data" / d / "wav.scp").read_text().splitlines():
            utt, path = line.split(maxsplit=1)
            got, _ = soundfile.read(tmp_path / path, dtype="int16")
            want, _ = soundfile.read(recipe / path, dtype="int16")
            assert got.shape == want.shape and abs(got.astype(int) - want).max() <= 2, utt   # sox dithers: +-1 LSB

def test_stats_stage_killed_midway_reruns_to_the_same_statistics(recipe):
    stats = recipe / "exp" / "asr_stats_char"
    want = {p.relative_to(stats): p.read_bytes() for p in stats.rglob("*") if p.is_file() and p.suffix in (".npz", "")}
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", "3", "--stop_stage", "3"]
    rc = kill_when(cmd, recipe, lambda: (recipe / "exp" / "asr_stats_char.tmp").exists())
    assert rc != 0 and all((stats / k).exists() for k in want)            # the earlier statistics are still there
    r = run(recipe, "--stage", "3", "--stop_stage", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (recipe / "exp" / "asr_stats_char.tmp").exists()
    for k, v in want.items():
        if k.name.endswith("_shape"):
            assert (stats / k).read_bytes() == v, k
        elif k.suffix == ".npz":      # the same sums (up to the order ESPnet's loader workers add them in)
            got, ref = np.load(stats / k), np.load(io.BytesIO(v))
            assert sorted(got) == sorted(ref) and all(np.allclose(got[n], ref[n], rtol=1e-9) for n in ref), k

def test_training_stage_killed_midway_resumes(recipe):
    exp = recipe / "exp" / "asr_kill5"
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", "5", "--stop_stage", "5", "--asr_tag", "kill5"]
    rc = kill_when(cmd, recipe, lambda: (exp / "train.log").exists() and "2/2epoch started" in (exp / "train.log").read_text())
    assert rc != 0 and (exp / "checkpoint.pth").exists() and not (exp / "valid.acc.ave.pth").exists()
    r = run(recipe, "--stage", "5", "--stop_stage", "5", "--asr_tag", "kill5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "The training was resumed using exp/asr_kill5/checkpoint.pth" in (exp / "train.log").read_text()
    assert (exp / "valid.acc.ave.pth").exists() and '"epochs": 2' in (exp / "training_summary.json").read_text()
    # finished: a rerun trains nothing; other training options (here one more epoch) resume it
    r = run(recipe, "--stage", "5", "--stop_stage", "5", "--asr_tag", "kill5")
    assert r.returncode == 0 and "train: nothing to do" in r.stdout and not (exp / "train.log.2").exists()
    r = run(recipe, "--stage", "5", "--stop_stage", "5", "--asr_tag", "kill5", "--asr_args", "--max_epoch 3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"epochs": 3' in (exp / "training_summary.json").read_text() and (exp / "train.log.2").exists()


# what each short stage writes for the stages after it (stage 9: for the reader), and the temporary files
# it writes them through; lines that date a run (sclite's creation_date, the report's date) are left out

@pytest.mark.parametrize("stage", [2, 4, 8, 9])
def test_short_stage_killed_at_random_points_reruns_to_the_same_outputs(recipe, stage):
    """Kill the stage at two random points of its run and once while it writes its outputs: what is left is
    each output complete or absent, never half-written, and a rerun writes what an unkilled run does."""
    import random
    import time
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", str(stage), "--stop_stage", str(stage)]

    def run_stage(runner, *args, **kw):   # stage 8 leaves scores newer than their texts: decoded anew, it scores
        for text in recipe.glob(f"exp/*/{DECODE}/*/text") if stage == 8 else ():
            os.utime(text)
        return runner(*args, **kw)
    t0 = time.time()
    r = run_stage(run, recipe, "--stage", str(stage), "--stop_stage", str(stage))
    length = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    want = stage_outputs(recipe, stage)
    assert want and all(want.values()), want.keys()
    rng = random.Random(stage)
    writing = lambda: any(recipe.glob(STAGE_TEMPORARIES[stage]))            # noqa: E731
    for delay in [rng.uniform(0.1, 0.7) * length for _ in range(2)] + [None]:
        start = time.time()
        if delay is None:   # the moment a temporary output appears (the writing itself may be too quick to catch)
            rc = run_stage(kill_when, cmd, recipe, writing, poll=0.001)
        else:   # a rerun may be quicker than the first run (warm caches): halve the delay until the kill lands
            tried = []
            while len(tried) < 4:
                tried.append(delay)
                rc = run_stage(kill_when, cmd, recipe, lambda: time.time() - start >= delay)
                if rc != 0:
                    break
                delay, start = delay / 2, time.time()
            assert rc != 0, f"stage {stage} finished before each kill (at {', '.join(f'{d:.2f}' for d in tried)} s)"
        left = stage_outputs(recipe, stage)
        half = [k for k in left if left[k] != want.get(k)]
        assert not half, f"stage {stage} killed after {time.time() - start:.2f} s: {half} half-written"
        r = run_stage(run, recipe, "--stage", str(stage), "--stop_stage", str(stage))
        assert r.returncode == 0, r.stderr[-2000:]
        assert stage_outputs(recipe, stage) == want and not any(recipe.glob(STAGE_TEMPORARIES[stage]))
