"""Systems beyond the default ones through run.sh on the tiny recipe (tests/recipe.py): all-in-one nested systems
and their twins, a model trained elsewhere, a foundation model fine-tuned with CTC."""
import json
import os

import yaml

from tests.conftest import ROOT
from tests.recipe import DECODE, pytestmark, recipe, run  # noqa: F401


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
