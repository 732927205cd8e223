"""More of run.sh on the tiny corpus, in a recipe dir of its own (so that the test runner can take it beside
tests/test_recipe_smoke.py): seeds, kills of the data, stats, training and short stages, all-in-one, and a
model trained elsewhere."""
import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_recipe_smoke import (ARGS, DECODE, SETS, STAGE_OUTPUTS, STAGE_TEMPORARIES, kill_when, pytestmark,  # noqa: F401
                                     recipe, run, stage_outputs)


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
        if k.suffix == ".npz" or k.name.endswith("_shape"):
            assert (stats / k).read_bytes() == v, k

def test_training_stage_killed_midway_resumes(recipe):
    exp = recipe / "exp" / "asr_kill5"
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", "5", "--stop_stage", "5", "--asr_tag", "kill5"]
    rc = kill_when(cmd, recipe, lambda: (exp / "train.log").exists() and "2/2epoch started" in (exp / "train.log").read_text())
    assert rc != 0 and (exp / "checkpoint.pth").exists() and not (exp / "valid.acc.ave.pth").exists()
    r = run(recipe, "--stage", "5", "--stop_stage", "5", "--asr_tag", "kill5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "The training was resumed using exp/asr_kill5/checkpoint.pth" in (exp / "train.log").read_text()
    assert (exp / "valid.acc.ave.pth").exists() and '"epochs": 2' in (exp / "training_summary.json").read_text()


# what each short stage writes for the stages after it (stage 9: for the reader), and the temporary files
# it writes them through; lines that date a run (sclite's creation_date, the report's date) are left out

@pytest.mark.parametrize("stage", [2, 4, 8, 9])
def test_short_stage_killed_at_random_points_reruns_to_the_same_outputs(recipe, stage):
    """Kill the stage at two random points of its run and once while it writes its outputs: what is left is
    each output complete or absent, never half-written, and a rerun writes what an unkilled run does."""
    import random
    import time
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, "--stage", str(stage), "--stop_stage", str(stage)]
    t0 = time.time()
    r = run(recipe, "--stage", str(stage), "--stop_stage", str(stage))
    length = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    want = stage_outputs(recipe, stage)
    assert want and all(want.values()), want.keys()
    rng = random.Random(stage)
    writing = lambda: any(recipe.glob(STAGE_TEMPORARIES[stage]))            # noqa: E731
    for delay in [rng.uniform(0.1, 0.7) * length for _ in range(2)] + [None]:
        start = time.time()
        if delay is None:   # the moment a temporary output appears (the writing itself may be too quick to catch)
            rc = kill_when(cmd, recipe, writing, poll=0.001)
        else:
            rc = kill_when(cmd, recipe, lambda: time.time() - start >= delay)
            assert rc != 0, f"stage {stage} finished within {delay:.2f} s"
        left = stage_outputs(recipe, stage)
        half = [k for k in left if left[k] != want.get(k)]
        assert not half, f"stage {stage} killed after {time.time() - start:.2f} s: {half} half-written"
        r = run(recipe, "--stage", str(stage), "--stop_stage", str(stage))
        assert r.returncode == 0, r.stderr[-2000:]
        assert stage_outputs(recipe, stage) == want and not any(recipe.glob(STAGE_TEMPORARIES[stage]))

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

def test_all_in_one_trains_nested_systems_in_one_run_then_each_on_its_own(recipe):
    conf = f"{ROOT}/tests/conf/quant/aio_tiny.yaml"
    r = run(recipe, "--stage", "6", "--quant_confs", conf, "--quant_test_sets", "test", "--acoustic_config", "")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir = recipe / "exp" / "asr_train_tiny_aio_tiny"
    assert "mpq_all_in_one" in (run_dir / "config.yaml").read_text()
    sizes = {}
    for name in ("d1_ff1_w4", "d1_ff0p5_w2"):
        nested, twin = recipe / "exp" / f"asr_train_tiny_aio_tiny_{name}", recipe / "exp" / f"asr_train_tiny_aio_tiny_{name}_twin"
        for d, method in ((nested, "all_in_one"), (twin, "all_in_one_twin")):
            record = yaml.safe_load((d / "system.yaml").read_text())
            assert record["method"] == method
            assert (d / DECODE / "test" / "score_wer" / "result.txt").exists()
            size = json.loads((d / "packed.size.json").read_text())
            assert size["disk_bytes"] == (d / "packed.safetensors").stat().st_size
        sizes[name] = json.loads((nested / "packed.size.json").read_text())
        # the nested system's time is the one run's fine-tuning, then its own packing
        log = json.loads((nested / "compression_time.json").read_text())
        assert [e["what"] for e in log] == ["train", "pack"]
        assert log[0] == json.loads((run_dir / "compression_time.json").read_text())[0]
        twin_config = yaml.safe_load((twin / "config.yaml").read_text())
        assert twin_config["encoder_conf"]["linear_units"] == (64 if name == "d1_ff1_w4" else 32)
        assert (twin / "init" / "valid.acc.best.pth").exists() and "init_param" in (twin / "train.log").read_text()
    assert sizes["d1_ff0p5_w2"]["disk_bytes"] < sizes["d1_ff1_w4"]["disk_bytes"]
    assert sizes["d1_ff0p5_w2"]["avg_weight_bits"] == 2
    results = (recipe / "RESULTS.md").read_text()
    assert "## All-in-one: nested systems and their twins" in results and "### aio_tiny (seed 1)" in results
    assert "|asr_train_tiny_aio_tiny_d1_ff0p5_w2|" in results and "less**" in results
    assert (recipe / "results" / "aio_tiny_seed1_all_in_one.png").exists()

def assert_packed_with_encoder(exp, encoder, header_slack):
    """A system of this encoder, packed: its file's size is the accounting's plus the header (under 1% + slack)."""
    assert yaml.safe_load((exp / "config.yaml").read_text())["encoder"] == encoder
    size = json.loads((exp / "packed.size.json").read_text())
    assert size["disk_bytes"] == (exp / "packed.safetensors").stat().st_size
    assert size["disk_bytes"] - size["accounted_bytes"] == size["header_bytes"] < 0.01 * size["disk_bytes"] + header_slack


def test_a_model_trained_elsewhere_is_imported_and_compressed(recipe, tmp_path):
    """A stock ESPnet E-Branchformer in a model-zoo layout (paths relative to the zoo's root) goes through
    stages 2-6: imported (its config, tokens and statistics), its lengths measured with its own config,
    fine-tuned with w4 and packed at the accounted size."""
    from tests.test_import import zoo
    tokens = (recipe / "data" / "token_list" / "char" / "tokens.txt").read_text().split()
    root = zoo(tmp_path, os.path.join(ROOT, "tests", "conf", "train_tiny_ebf.yaml"), tokens=tokens)
    r = run(recipe, "--asr_model_dir", str(root), "--asr_tag", "zoo_ebf", "--stage", "2", "--stop_stage", "6",
            "--quant_confs", f"{ROOT}/conf/quant/w4.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train: nothing, exp/asr_zoo_ebf is imported" in r.stdout
    for system in ("asr_zoo_ebf", "asr_zoo_ebf_w4"):
        assert_packed_with_encoder(recipe / "exp" / system, "e_branchformer", header_slack=4096)
    assert json.loads((recipe / "exp" / "asr_zoo_ebf_w4" / "packed.size.json").read_text())["avg_weight_bits"] == 4
    assert (recipe / "exp" / "asr_stats_zoo_ebf" / "train" / "speech_shape").exists()


def test_a_foundation_model_is_fine_tuned_with_ctc_and_compressed(recipe, tmp_path):
    """A tiny random wav2vec2 written with transformers' save_pretrained, read by path: statistics and CTC
    fine-tuning through the recipe (stages 3-5, an exp dir of its own), w4 (stage 6; the other methods on
    these models: tests/test_ssl.py), packed at the accounted size, decoded with the lexicon search and
    scored (7-8)."""
    from tests.test_ssl import write_tiny_model
    with open(os.path.join(ROOT, "tests", "conf", "train_tiny.yaml")) as f:
        conf = yaml.safe_load(f)
    for k in ("encoder_conf", "decoder", "decoder_conf", "frontend_conf"):
        conf.pop(k)
    conf.update(encoder="hf_ssl", encoder_conf={"model_dir": write_tiny_model(tmp_path, "wav2vec2"),
                                                "overrides": {"mask_time_prob": 0.0}},
                input_size=1, normalize=None, model_conf={"ctc_weight": 1.0},
                best_model_criterion=[["valid", "cer_ctc", "min"]])
    with open(tmp_path / "train_tiny_w2v.yaml", "w") as f:
        yaml.safe_dump(conf, f)
    r = run(recipe, "--asr_config", str(tmp_path / "train_tiny_w2v.yaml"), "--expdir", "exp_ssl", "--stage", "3",
            "--stop_stage", "8", "--inference_model", "valid.cer_ctc.best.pth", "--test_sets", "test",
            "--quant_test_sets", "test", "--acoustic_config", "",
            "--quant_confs", f"{ROOT}/conf/quant/w4.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for system in ("asr_train_tiny_w2v", "asr_train_tiny_w2v_w4"):
        exp = recipe / "exp_ssl" / system
        assert_packed_with_encoder(exp, "hf_ssl", header_slack=8192)
        assert (exp / DECODE / "test" / "score_wer" / "result.txt").exists()
    assert json.loads((recipe / "exp_ssl" / "asr_train_tiny_w2v_w4" / "packed.size.json").read_text())["avg_weight_bits"] == 4
