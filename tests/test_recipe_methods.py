"""The quantize stage's methods through run.sh on the tiny recipe (tests/recipe.py): two-stage searches, PTQ,
reruns and kills of the stage."""
import json
import os

import pytest
import yaml

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


def test_first_order_check_sets_the_search_signal_beside_the_actual_loss_change(recipe, tmp_path, monkeypatch):
    from mpq_plugins.bin import first_order_check
    monkeypatch.chdir(recipe)                      # the model's config names its statistics relative to the recipe
    exp = recipe / "exp" / "asr_train_tiny"
    args = ["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "valid.acc.best.pth"),
            "--data", str(recipe / "data" / "dev"), "--n_utts", "4", "--candidates", "1", "4", "8"]
    out = tmp_path / "check.md"
    # (the tiny model's CTC output layer gets no gradient on these utterances; the decoder's output layer does)
    first_order_check.main(args + ["--layers", "decoder.output_layer", "encoder.encoders.0.feed_forward.w_1",
                                   "--out", str(out)])
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["utterances"] == 4 and set(result["layers"]) == {"decoder.output_layer",
                                                                 "encoder.encoders.0.feed_forward.w_1"}
    for layer in result["layers"].values():
        c = {float(k): v for k, v in layer["candidates"].items()}
        assert set(c) == {1, 4, 8}
        assert c[1]["norm_ratio"] < c[4]["norm_ratio"] < 1.001 and abs(c[8]["norm_ratio"] - 1) < 0.01
        assert abs(c[8]["actual"]) < abs(c[1]["actual"])          # 8 bits barely moves the loss; 1 bit does
    rows = [r for r in out.read_text().splitlines() if r.startswith("|")]
    assert len(rows) == 2 + 2 * 3 and rows[2].startswith("|decoder.output_layer (")
    with pytest.raises(SystemExit, match="encoder.nothing is not a module"):
        first_order_check.main(args + ["--layers", "encoder.nothing", "--out", str(out)])
    # the teacher's KL: zero with its gradient at the float point; with the other layers at w4's bits, not
    kl = args + ["--layers", "decoder.output_layer", "ctc.ctc_lo", "--loss", "teacher_kl", "--out", str(out)]
    first_order_check.main(kl)
    float_point = json.loads((tmp_path / "check.json").read_text())
    assert float_point["loss_kind"] == "teacher_kl" and abs(float_point["loss"]) < 1e-5 and not float_point["rest"]
    for layer in float_point["layers"].values():
        for c in layer["candidates"].values():
            assert abs(c["first_order"]) < 1e-5 and c["actual"] > -1e-5          # the KL's minimum: nothing below
    assert float_point["layers"]["decoder.output_layer"]["candidates"]["1"]["actual"] > 1e-4
    w4 = recipe / "exp" / "asr_train_tiny_w4"
    first_order_check.main(kl + ["--rest_bits_from", str(w4)])
    quantized = json.loads((tmp_path / "check.json").read_text())
    rest = yaml.safe_load((w4 / "system.yaml").read_text())["bits_per_layer"]
    assert set(quantized["rest"]) == set(rest) - {"decoder.output_layer", "ctc.ctc_lo"} and set(quantized["rest"].values()) == {4}
    assert quantized["loss"] > 1e-4 and quantized["rest_bits_from"] == str(w4)
    assert "other layers at the bits of" in out.read_text()
    assert any(abs(c["first_order"]) > 1e-7 for c in quantized["layers"]["decoder.output_layer"]["candidates"].values())
    with pytest.raises(SystemExit, match="system.yaml: missing"):
        first_order_check.main(kl + ["--rest_bits_from", str(tmp_path)])
