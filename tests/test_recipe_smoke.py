"""Every stage of run.sh on the tiny corpus (tests/recipe.py builds it once), and the outputs agree: the
stages' outputs, their reruns, the report, bad input and options, kills of the decode stage, ESPnet's LM."""
import json
import os
import subprocess

import pytest
import yaml

from mpq_plugins.eval.scoring import parse_sum_avg
from mpq_plugins.quant.packing import read_packed
from tests.conftest import ROOT
from tests.recipe import (ARGS, DECODE, QSETS, SETS, SYSTEMS, kill_when, own_audio, pytestmark, recipe, run)  # noqa: F401


def words(path):
    with open(path) as f:
        return sum(len(line.split()) - 1 for line in f)

def test_all_stages_agree(recipe):
    exp = recipe / "exp" / "asr_train_tiny"
    assert (exp / "valid.acc.ave.pth").exists()
    assert (recipe / "exp" / "lm_word_3gram" / "lm.json").exists()
    with open(exp / DECODE / "test" / "logdir" / "asr_inference.1.log") as f:
        assert "--word_lm_file" in f.read()                          # decoding used the word LM
    assert (exp / "training_curve.png").stat().st_size > 1000
    assert "<space>" in (recipe / "data" / "token_list" / "char" / "tokens.txt").read_text()
    results = (recipe / "RESULTS.md").read_text()
    for system in SYSTEMS:
        for s in (SETS if system == SYSTEMS[0] else QSETS):
            dec = recipe / "exp" / system / DECODE / s
            with open(recipe / "data" / s / "text") as f:
                ref_ids = [line.split()[0] for line in f]
            with open(dec / "text") as f:
                hyp_ids = [line.split()[0] for line in f]
            assert hyp_ids == ref_ids                              # one hypothesis per utterance
            row = parse_sum_avg(str(dec / "score_wer" / "result.txt"))
            assert row["Snt"] == len(ref_ids)
            assert row["Wrd"] == words(recipe / "data" / s / "text")   # sclite saw exactly the reference words
            assert row["Corr"] + row["Sub"] + row["Del"] == pytest.approx(100, abs=0.2)
            assert f"|{DECODE}/{s}|6|" in results
        size = json.loads((recipe / "exp" / system / "packed.size.json").read_text())
        assert size["disk_bytes"] == (recipe / "exp" / system / "packed.safetensors").stat().st_size
        record = yaml.safe_load((recipe / "exp" / system / "system.yaml").read_text())   # one record per system
        assert record["system"] == system and record["sizes"]["disk_bytes"] == size["disk_bytes"]
        assert record["bits_per_layer"] == size["bits_per_layer"]
        assert record["source_checkpoint"] == "exp/asr_train_tiny/valid.acc.best.pth"
        assert f"|{system}|{record['description']}|" in results
    assert (recipe / "results" / "asr_train_tiny_training_curve.png").exists()
    # the acoustic decode of every system and set, with its own tuned weights, scored and in the verdicts
    acoustic = "decode_tiny_acoustic_packed"
    for system in SYSTEMS:
        for s in (SETS if system == SYSTEMS[0] else QSETS):
            assert (recipe / "exp" / system / acoustic / s / "score_wer" / "hyp.trn.sgml").exists()
    tuned = yaml.safe_load((exp / acoustic / "tuned_config.yaml").read_text())
    assert tuned["search"] == "ctc" and "tune" not in tuned and tuned["ctc_weight"] in (0.3, 0.5)
    assert "|test (tiny_acoustic)|asr_train_tiny_w4|" in results and "lossless on every test set and decode" in results
    log = (exp / DECODE / "test" / "logdir" / "asr_inference.1.log").read_text()
    assert "'search': 'lexicon'" in log and "RTF" in log
    assert len((recipe / "data" / "test_perturbed" / "text").read_text().splitlines()) == 6


def test_quantized_systems(recipe):
    sizes = {s: json.loads((recipe / "exp" / s / "packed.size.json").read_text()) for s in SYSTEMS}
    assert sizes["asr_train_tiny_w4"]["avg_weight_bits"] == 4
    assert sizes["asr_train_tiny_w4"]["disk_bytes"] < sizes["asr_train_tiny"]["disk_bytes"] / 2.5
    for s in SYSTEMS[1:]:
        log = json.loads((recipe / "exp" / s / "compression_time.json").read_text())
        assert [e["what"] for e in log] == ["train", "pack"] and all(e["rc"] == 0 for e in log)
        assert "init_param" in (recipe / "exp" / s / "train.log").read_text()
        record = yaml.safe_load((recipe / "exp" / s / "system.yaml").read_text())
        assert record["compression_time"]["total_s"] == pytest.approx(sum(e["wall_s"] for e in log), abs=0.02)
    records = {s: yaml.safe_load((recipe / "exp" / s / "system.yaml").read_text()) for s in SYSTEMS}
    assert [records[s]["method"] for s in SYSTEMS] == ["float", "qat", "one_stage"]
    assert records[SYSTEMS[0]]["training"]["epochs"] >= 1 and records[SYSTEMS[0]]["compression_time"] is None
    assert records[SYSTEMS[1]]["description"] == "uniform QAT, weights" and records[SYSTEMS[1]]["weight_bits"] == 4


def test_one_stage_mixed_precision_system(recipe):
    exp = recipe / "exp" / "asr_train_tiny_mpq_one_stage_tiny"
    size = json.loads((exp / "packed.size.json").read_text())
    assert size["avg_bits_per_param"] <= 11.6 and len(set(size["bits_per_layer"].values())) >= 1   # the whole file
    assert "bit-widths fixed after 2 updates" in (exp / "train.log").read_text()
    record = yaml.safe_load((exp / "system.yaml").read_text())
    assert record["method"] == "one_stage" and record["budget"] == {"avg_bits": 11.6}
    assert record["conf"]["quantization"]["mixed_precision"]["search_fraction"] == 0.6
    assert json.loads((exp / "mixed_precision.json").read_text())["search_steps"] == 2    # 0.6 of the run's 3 updates
    assert json.loads((exp / "mixed_precision.json").read_text())["bits"] == size["bits_per_layer"]
    config = yaml.safe_load((exp / "config.yaml").read_text())      # training ended with a plain quantized model
    assert config["model"] == "espnet" and "mixed_precision" not in config["quantization"]
    _, meta, _ = read_packed(exp / "packed.safetensors")
    assert yaml.safe_load(meta["config"])["quantization"] == config["quantization"]

def test_stock_espnet_loader_drops_the_quantizers_ours_does_not(recipe, monkeypatch):
    import torch
    from espnet2.tasks.asr import ASRTask

    from mpq_plugins.espnet.load import load_asr_model
    from mpq_plugins.quant.layers import QUANT_LAYERS
    monkeypatch.chdir(recipe)                        # config.yaml names the stats file relative to the recipe
    exp = recipe / "exp" / "asr_train_tiny_w4"
    stock, _ = ASRTask.build_model_from_file(exp / "config.yaml", exp / "valid.acc.ave.pth", "cpu")
    ours, _ = load_asr_model(exp / "config.yaml", exp / "valid.acc.ave.pth")
    packed, _ = load_asr_model(exp / "config.yaml", exp / "packed.safetensors")
    assert not any(isinstance(m, QUANT_LAYERS) for m in stock.modules())   # silently a float model
    assert sum(isinstance(m, QUANT_LAYERS) for m in ours.modules()) > 20
    speech, lengths = torch.randn(1, 16000), torch.tensor([16000])
    with torch.no_grad():
        e_stock = stock.eval().encode(speech, lengths)[0]
        e_ours = ours.encode(speech, lengths)[0]
        e_packed = packed.encode(speech, lengths)[0]
    assert torch.equal(e_ours, e_packed)             # the packed file is the fake-quantized model
    assert not torch.allclose(e_stock, e_ours)


def test_rerun_scoring_stage_is_stable(recipe):
    before = (recipe / "exp" / "asr_train_tiny" / DECODE / "test" / "score_wer" / "result.txt").read_text()
    r = run(recipe, "--stage", "8", "--stop_stage", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    after = (recipe / "exp" / "asr_train_tiny" / DECODE / "test" / "score_wer" / "result.txt").read_text()
    assert parse_sum_avg_text(before) == parse_sum_avg_text(after)


def test_report_stage_alone_and_verdicts_agree_with_sc_stats_by_hand(recipe, tmp_path):
    import re
    import time
    t0 = time.time()
    r = run(recipe, "--stage", "9", "--stop_stage", "9")
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.time() - t0 < 60
    results = (recipe / "RESULTS.md").read_text()
    assert "MAPSSWE" in results and "lossless" in results and (recipe / "results" / "wer_vs_size.png").exists()
    for system in SYSTEMS[1:]:
        for s in QSETS:
            d = recipe / "exp" / system / DECODE / s / "mapsswe"
            res = json.loads((d / "result.json").read_text())
            assert res["tool"] == "sc_stats"
            # sc_stats by hand on the same two alignments
            ref, sysf = d / f"{res['baseline']}.sgml", d / f"{system}.sgml"
            cat = subprocess.run(f"cat {ref} {sysf} | /usr/lib/sctk/bin/sc_stats -p -t mapsswe -v -n hand -O {tmp_path}",
                                 shell=True, capture_output=True, text=True)
            assert cat.returncode == 0, cat.stdout + cat.stderr
            z = float(re.search(r"\(Z Stat: *([-0-9.]+)\)", (tmp_path / "hand.stats.mapsswe").read_text()).group(1))
            assert res["z"] == pytest.approx(z, abs=1e-3)
            assert res["lossless"] == (not (res["p"] < 0.05 and res["err_b"] > res["err_a"]))


def parse_sum_avg_text(text):
    return [line for line in text.splitlines() if "Sum/Avg" in line]


def test_corrupt_audio_fails_cleanly(recipe):
    results_before = (recipe / "RESULTS.md").read_text()
    hyp_before = (recipe / "exp" / "asr_train_tiny" / DECODE / "dev" / "text").read_text()
    with own_audio(recipe, "dev") as victim:
        with open(victim, "wb") as f:
            f.write(b"RIFF not really a wave file")
        r = run(recipe, "--stage", "7", "--stop_stage", "9")
        assert r.returncode != 0
        assert victim in r.stderr and "not readable audio" in r.stderr
        assert "Traceback" not in r.stderr
        assert (recipe / "RESULTS.md").read_text() == results_before      # earlier results untouched
        assert (recipe / "exp" / "asr_train_tiny" / DECODE / "dev" / "text").read_text() == hyp_before


def test_rerun_of_a_finished_training_trains_nothing_and_keeps_the_curve(recipe):
    exp = recipe / "exp" / "asr_train_tiny"
    model_before = (exp / "valid.acc.ave.pth").read_bytes()
    r = run(recipe, "--stage", "5", "--stop_stage", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train: nothing to do" in r.stdout and not (exp / "train.log.1").exists()   # ESPnet not even started
    assert '"epochs": 2' in (exp / "training_summary.json").read_text()
    assert (exp / "valid.acc.ave.pth").read_bytes() == model_before


def test_unknown_option_is_rejected(recipe):
    r = run(recipe, "--stage", "7", "--no_such_option", "1")
    assert r.returncode != 0 and "--no_such_option" in r.stderr


def test_missing_config_is_one_clear_error(tmp_path):
    r = subprocess.run([os.path.join(ROOT, "run.sh"), "--asr_config", "no/such.yaml"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "--asr_config no/such.yaml: no such file" in r.stderr
    assert not (tmp_path / "data").exists()                          # nothing was started


def test_unknown_lm_kind_is_rejected(recipe):
    r = run(recipe, "--stage", "7", "--lm", "kenlm")
    assert r.returncode != 0 and "--lm kenlm: expected ngram, rnn or none" in r.stderr


def test_bad_quant_conf_fails_before_training(recipe, tmp_path):
    bad = tmp_path / "w9.yaml"
    bad.write_text("method: qat\nquantization:\n    weight_bits: 9\n")
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", str(bad))
    assert r.returncode != 0
    assert "w9.yaml: quantization: weight_bits 9 is not one of 1, 1.6 (ternary), 2" in r.stderr and "Traceback" not in r.stderr
    assert not (recipe / "exp" / "asr_train_tiny_w9").exists()
    bad.write_text("method: one_stage\nquantization:\n    mixed_precision:\n        budget: {avg_bits: 11.6}\n"
                   "        search_steps: 1000\n")
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", str(bad))
    assert r.returncode != 0 and "search_steps 1000 is more than the 3 optimizer updates this run makes" in r.stderr
    assert not (recipe / "exp" / "asr_train_tiny_w9" / "train.log").exists()
    bad.write_text("quantization:\n    weight_bits: 4\n")                 # no method
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", str(bad))
    assert r.returncode != 0 and "w9.yaml: method '' is not one of" in r.stderr

@pytest.mark.parametrize("args,message", [
    (("--stage", "three"), "--stage three: expected a stage number, 1 to 9"),
    (("--stage", "99"), "--stage 99: expected a stage number, 1 to 9"),
    (("--stage", "5", "--stop_stage", "3"), "--stage 5 is after --stop_stage 3"),
    (("--nj", "0"), "--nj 0: expected a positive integer"),
    (("--token_type", "phone"), "--token_type phone: expected char, bpe or word"),
    (("--no_such_option", "1"), "unknown option --no_such_option"),
    (("--seeds", "1 two"), "--seeds 1 two: expected integers"),
    (("--lm", "none"), "has search: lexicon, which needs --lm ngram"),
])
def test_bad_options_are_one_error_with_the_usage(tmp_path, args, message):
    r = subprocess.run([os.path.join(ROOT, "run.sh"), *args], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "integer expression expected" not in r.stderr and not (tmp_path / "data").exists()


@pytest.mark.parametrize("audio,message", [
    ("short", "holds 28 samples, fewer than the 1600"),
    ("rate", "is sampled at 8000 Hz, the recipe expects 16000 Hz"),
    ("missing", "does not exist"),
])
def test_bad_audio_stops_every_stage_before_it_reads_it(recipe, audio, message):
    import numpy as np
    import soundfile
    results_before = (recipe / "RESULTS.md").read_text()
    with own_audio(recipe, "test") as victim:
        if audio == "missing":
            os.remove(victim)
        else:
            soundfile.write(victim, np.zeros(28 if audio == "short" else 8000, np.float32),
                            16000 if audio == "short" else 8000)
        for stage in ("2", "7"):
            r = run(recipe, "--stage", stage, "--stop_stage", stage)
            assert r.returncode != 0 and victim in r.stderr and message in r.stderr, r.stderr[-2000:]
            assert "Traceback" not in r.stderr and "run.pl" not in r.stderr
        assert (recipe / "RESULTS.md").read_text() == results_before      # earlier results untouched


def test_a_lexicon_that_does_not_fit_the_lm_stops_decoding_and_keeps_the_earlier_decodes(recipe):
    words = recipe / "exp" / "lm_word_3gram" / "words.txt"
    saved = words.read_bytes()
    texts = {p: p.read_bytes() for p in (recipe / "exp").glob(f"*/{DECODE}/*/text")}
    try:
        words.write_bytes(saved + b"zzzq\n")
        r = run(recipe, "--stage", "7", "--stop_stage", "7", "--quant_confs", "")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"{words.relative_to(recipe)}: 1 words are not in the ARPA file" in r.stderr, r.stderr[-2000:]
        assert {p: p.read_bytes() for p in texts} == texts                    # earlier decodes untouched
    finally:
        words.write_bytes(saved)
    # the lexicon is newer than the decodes now: a rerun decodes again (the same words: the same hypotheses)
    dev = recipe / "exp" / "asr_train_tiny" / DECODE / "dev" / "text"
    before = dev.stat().st_mtime_ns
    r = run(recipe, "--stage", "7", "--stop_stage", "7", "--quant_confs", "", "--test_sets", "dev",
            "--acoustic_config", "")
    assert r.returncode == 0, r.stderr[-2000:]
    assert dev.stat().st_mtime_ns > before and dev.read_bytes() == texts[dev]
    assert "tuned_config.yaml is up to date" in r.stdout          # the lexicon's words as before: weights not tuned again

def test_a_quantized_system_decodes_on_int8_kernels_as_a_decode_of_its_own(recipe):
    int8 = "decode_tiny_int8_packed"
    r = run(recipe, "--stage", "7", "--stop_stage", "8", "--quant_confs", f"{ROOT}/conf/quant/w4.yaml",
            "--test_sets", "test", "--acoustic_config", "",
            "--inference_config", os.path.join(ROOT, "tests/conf/decode_tiny_int8.yaml"))
    assert r.returncode == 0, r.stderr[-2000:]
    dec = recipe / "exp" / "asr_train_tiny_w4" / int8 / "test"
    logs = "".join(p.read_text() for p in (dec / "logdir").glob("*.log"))
    assert "serve int8: " in logs and "serve int8: 0 quantized layers" not in logs     # w4's layers on int8 kernels
    floats = "".join(p.read_text() for p in (recipe / "exp" / "asr_train_tiny" / int8 / "test" / "logdir").glob("*.log"))
    assert "serve int8: 0 quantized layers" in floats                                # the float model as it is
    ref = (recipe / "exp" / "asr_train_tiny_w4" / DECODE / "test" / "text").read_text().splitlines()
    hyp = (dec / "text").read_text().splitlines()
    assert [h.split()[0] for h in hyp] == [x.split()[0] for x in ref]                 # every utterance decoded
    assert (dec / "score_wer" / "result.txt").exists()


def test_decode_stage_killed_midway_reruns_to_the_same_hypotheses(recipe):
    dec = recipe / "exp" / "asr_train_tiny" / DECODE / "dev"
    want = (dec / "text").read_text()
    (dec / "text").unlink()                                   # as if never decoded
    only_dev = ("--stage", "7", "--stop_stage", "7", "--quant_confs", "", "--test_sets", "dev", "--acoustic_config", "",
                "--nj", "2")                                  # two jobs (the recipe's decodes were one)
    cmd = [os.path.join(ROOT, "run.sh"), *ARGS, *only_dev]
    rc = kill_when(cmd, recipe, lambda: (dec / "logdir").exists())          # the decoding jobs are starting
    assert rc != 0 and not (dec / "text").exists()            # nothing half-written where scoring reads
    r = run(recipe, *only_dev)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (dec / "text").read_text() == want                 # the two jobs' hypotheses merged in order
    assert sorted(p.name for p in (dec / "logdir").glob("asr_inference.*.log")) == ["asr_inference.1.log", "asr_inference.2.log"]

def test_espnet_rnn_lm_still_works(recipe):
    # last in this file: it decodes dev again, with ESPnet's character LSTM LM instead of the word LM
    for stage in ("4", "7"):       # the LM, then the decode (5 and 6 have nothing to do)
        r = run(recipe, "--stage", stage, "--stop_stage", stage, "--lm", "rnn", "--test_sets", "dev", "--quant_confs", "",
                "--inference_config", os.path.join(ROOT, "tests/conf/decode_tiny_espnet.yaml"), "--acoustic_config", "")
        assert r.returncode == 0, r.stderr[-2000:]
    assert (recipe / "exp" / "lm_train_lm_tiny_char" / "valid.loss.best.pth").exists()
    log = (recipe / "exp" / "asr_train_tiny" / "decode_tiny_espnet_packed" / "dev" / "logdir" / "asr_inference.1.log").read_text()
    assert "--lm_file" in log and "--word_lm_file" not in log and "'search': 'espnet'" in log


def test_decoding_benchmark_times_every_decoder_in_turns_and_counts_errors(recipe, monkeypatch):
    """benchmark_decoding on the tiny recipe: the float32 system and w4 served by int8 kernels, ESPnet's search and
    both fast decodes, two turns each; the errors are those of the hypotheses against the references."""
    from mpq_plugins.bin.benchmark_decoding import main
    monkeypatch.chdir(recipe)
    main(["--exp", "exp/asr_train_tiny", "--w8_exp", "exp/asr_train_tiny_w4", "--data", "data/test",
          "--calib_data", "data/dev", "--lm_dir", "exp/lm_word_3gram", "--n_utts", "3", "--repeats", "2",
          "--out", "bench/decoding.md"])
    res = json.loads((recipe / "bench" / "decoding.json").read_text())
    words = sum(len(line.split()) - 1 for line in (recipe / "data" / "test" / "text").read_text().splitlines()[:3])
    assert [(r["system"], r["decoder"].split(":")[0]) for r in res["rows"]] == [
        (s, d) for s in ("float32", "w8, int8 kernels") for d in ("ESPnet joint beam search + word LM", "fast",
                                                                 "fast acoustic")]
    for r in res["rows"]:
        assert len(r["repeats"]) == 2 and r["seconds"] > 0 and r["words"] == words and 0 <= r["errors"]
        assert r["rtf"] == pytest.approx(r["seconds"] / res["audio_seconds"])
    md = (recipe / "bench" / "decoding.md").read_text()
    assert "--repeats 2" in md and "--calib_data data/dev" in md and "x faster|" in md
    assert not (recipe / "bench" / ".benchmark_keys").exists()
    with pytest.raises(SystemExit):
        main(["--exp", "exp/asr_train_tiny", "--data", "data/test", "--lm_dir", "exp/lm_word_3gram", "--repeats", "0"])
