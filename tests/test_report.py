"""The report stage on hand-made systems: real sclite and sc_stats on hand-written hypotheses, the
float reference chosen per test set, the lossless verdicts, the table, the plots and the errors.
Each system is what the report reads: a system.yaml record and the score files of its decodes."""
import json
import os
import re

import pytest
import yaml

from mpq_plugins.bin import results
from mpq_plugins.eval import report
from mpq_plugins.eval.pyscore import two_tailed_p
from mpq_plugins.eval.scoring import score_dir
from mpq_plugins.eval.sctk import ScoringError
from mpq_plugins.record import RecordError, read_system

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/lib/sctk/bin/sc_stats"), reason="SCTK not installed")

DECODE = "decode_asr_packed"
N = 30
REF = {f"spk{u % 3}_{u:03d}": "the cat sat on the mat near the door" for u in range(N)}
DESCRIPTION = {"float": "float32", "float_control": "float32, fine-tuned (control)", "qat": "uniform QAT, weights",
               "ptq": "uniform PTQ, weights", "one_stage": "one-stage MPQ", "kl": "two-stage MPQ (KL)",
               "hessian": "two-stage MPQ (Hessian)", "supernet": "two-stage MPQ (supernet search)"}


def write_text(path, texts):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for k in sorted(texts):
            f.write(f"{k} {texts[k]}\n".replace("  ", " "))


def record(name, method="float", weight_bits=None, size=1000, bits_per_layer=None, budget=None, times=None,
           training=None, description=None, seed=0, conf=None):
    """A system.yaml record as the quantize stage writes it. times: [(what, wall seconds)] of
    search / train / pack (CPU time twice the wall time)."""
    is_float = method in ("float", "float_control")
    bits = 32.0 if is_float else float(weight_bits)
    if bits_per_layer is None:
        bits_per_layer = {} if is_float else {"a": int(bits), "b": int(bits)}
    time = None
    if times:
        parts = {w: float(sum(t for what, t in times if what == w)) for w in ("search", "train", "pack")}
        time = {"search_s": parts["search"], "train_s": parts["train"], "pack_s": parts["pack"],
                "total_s": float(sum(t for _, t in times)), "cpu_s": float(sum(2 * t for _, t in times))}
    return {"format": 1, "system": name, "method": method, "description": description or DESCRIPTION[method],
            "quant_conf": None if method == "float" else f"conf/quant/{name}.yaml",
            "conf": conf or ({} if is_float else {"quantization": {"weight_bits": weight_bits}}),
            "budget": budget, "is_float": is_float, "weight_bits": bits, "bits_per_layer": bits_per_layer,
            "sizes": {"fp32_bytes": 4000, "disk_bytes": size, "accounted_bytes": size - 40, "header_bytes": 40,
                      "compression_ratio": 4000 / size, "params": 1000, "quantized_fraction": 0.0 if is_float else 0.9},
            "compression_time": time, "source_checkpoint": "exp/asr_x/valid.acc.ave.pth", "seed": seed,
            "training": training}


def make_system(root, name, hyps, method="float", sets=("test",), decode=DECODE, **rec):
    """exp/<name>/: system.yaml (record's keywords) and, per set, hyps decoded and scored."""
    exp = root / "exp" / name
    for s in sets:
        d = exp / decode / s
        write_text(str(d / "text"), hyps)
        score_dir(str(root / "data" / s / "text"), str(d / "text"), str(root / "data" / s / "utt2spk"), str(d))
    (exp / "system.yaml").write_text(yaml.safe_dump(record(name, method, **rec), sort_keys=False))
    return str(exp)


def edit(utt_errors):
    """Hypotheses with `n` substitutions (the first n words replaced) in each utterance."""
    out = {}
    for u, (k, ref) in enumerate(sorted(REF.items())):
        words = ref.split()
        for i in range(utt_errors(u)):
            words[i] = "dog"
        out[k] = " ".join(words)
    return out


@pytest.fixture
def recipe(tmp_path):
    for s in ("dev", "test"):
        write_text(str(tmp_path / "data" / s / "text"), REF)
        write_text(str(tmp_path / "data" / s / "utt2spk"), {k: k.split("_")[0] for k in REF})
    return tmp_path


def test_verdicts_reference_choice_and_table(recipe):
    base = make_system(recipe, "asr_x", edit(lambda u: 1 if u < 2 else 0), size=4000,        # 2 errors
                       training={"epochs": 30, "train_seconds": 6000.0, "best_valid_acc": 0.9, "best_epoch": 28})
    (recipe / "exp" / "asr_x" / "training_curve.png").write_bytes(b"\x89PNG curve")
    ctrl = make_system(recipe, "asr_x_fp32_cont", edit(lambda u: 0), "float_control", size=4000,   # perfect
                       times=[("train", 240), ("pack", 2)])
    good = make_system(recipe, "asr_x_w8", edit(lambda u: 1 if u == 5 else 0), "qat", weight_bits=8, size=1000,
                       times=[("train", 300), ("pack", 12)])
    bad = make_system(recipe, "asr_x_w2", edit(lambda u: 1 + u % 2), "qat", weight_bits=2, size=250)
    out = str(recipe / "RESULTS.md")
    lines = report.report(base, [good, bad, ctrl], "test", "dev", out, DECODE)
    text = open(out).read()
    assert lines == text.splitlines()
    # the control is the better float row (0 errors), so significance is against it
    r_good = json.load(open(os.path.join(good, DECODE, "test", "mapsswe", "result.json")))
    r_bad = json.load(open(os.path.join(bad, DECODE, "test", "mapsswe", "result.json")))
    assert r_good["baseline"] == r_bad["baseline"] == "asr_x_fp32_cont"
    assert r_good["tool"] == "sc_stats"
    # w8: one extra error in 270 words -> not significant -> lossless; w2: 45 extra errors -> worse
    assert (r_good["err_a"], r_good["err_b"]) == (0, 1) and r_good["lossless"] and not r_good["significant"]
    assert (r_bad["err_a"], r_bad["err_b"]) == (0, 45) and r_bad["worse"] and not r_bad["lossless"]
    for r in (r_good, r_bad):
        assert r["p"] == pytest.approx(two_tailed_p(r["z"]))
    row = {}
    for line in lines:            # the main table's row of each system (the first)
        if line.startswith("|asr_x"):
            row.setdefault(line.split("|")[1], line.split("|"))
    head = next(line for line in lines if line.startswith("|system|")).split("|")
    col = {h: i for i, h in enumerate(head)}
    assert row["asr_x_w8"][col["lossless on test"]] == "yes" and row["asr_x_w2"][col["lossless on test"]] == "**no**"
    assert row["asr_x_w8"][col["lossless on every test set and decode"]] == "yes"
    assert row["asr_x_fp32_cont"][col["test change (abs / rel)"]] == "reference"
    assert row["asr_x_w2"][col["test WER"]] == "16.7"                     # 45 / 270 words
    assert row["asr_x_w2"][col["test change (abs / rel)"]].startswith("+16.7")
    assert row["asr_x_w8"][col["ratio"]] == "4.00x"
    assert "|uniform QAT, weights|4.00x|asr_x_w8|" in text                # highest lossless ratio per method
    assert os.path.getsize(recipe / "results" / "wer_vs_size.png") > 1000
    # the numbers of system.yaml: bits, sizes, compression time (against the baseline's training time)
    assert row["asr_x_w8"][col["weight bits"]] == "8.00" and row["asr_x"][col["weight bits"]] == "32 (float)"
    assert row["asr_x_w2"][col["size on disk (bytes)"]] == "250" and row["asr_x"][col["size on disk (bytes)"]] == "4,000"
    assert [row["asr_x_w8"][col[c]] for c in ("compression time, wall (min)", "over FP32 training", "CPU (min)")] \
        == ["5.2", "0.05x", "10.4"]
    assert [row["asr_x_w2"][col[c]] for c in ("compression time, wall (min)", "over FP32 training", "CPU (min)")] \
        == ["", "", ""]
    assert "FP32 training: 100.0 min wall-clock (asr_x)." in lines
    assert "- training: 30 epochs in 100.0 min, best validation accuracy 90.0% at epoch 28 (" in text
    assert (recipe / "results" / "asr_x_training_curve.png").read_bytes() == b"\x89PNG curve"


def test_baseline_better_than_control_is_the_reference(recipe):
    base = make_system(recipe, "asr_y", edit(lambda u: 0))
    ctrl = make_system(recipe, "asr_y_fp32_cont", edit(lambda u: 1 if u < 3 else 0), "float_control")
    q = make_system(recipe, "asr_y_w4", edit(lambda u: 0), "qat", weight_bits=4)
    report.report(base, [q, ctrl], "test", "dev", str(recipe / "RESULTS.md"), DECODE)
    r = json.load(open(os.path.join(q, DECODE, "test", "mapsswe", "result.json")))
    assert r["baseline"] == "asr_y" and r["z"] != r["z"] or r["p"] == 1.0   # identical output: no difference
    r_ctrl = json.load(open(os.path.join(ctrl, DECODE, "test", "mapsswe", "result.json")))
    assert r_ctrl["baseline"] == "asr_y"                                   # the control is tested too


def test_a_lucky_control_seed_is_not_the_reference(recipe):
    base = make_system(recipe, "asr_s", edit(lambda u: 2 if u < 12 else 0))
    ctrl = make_system(recipe, "asr_s_fp32_cont", edit(lambda u: 1 if u < 12 else 0), "float_control", seed=1)
    lucky = make_system(recipe, "asr_s_fp32_cont_seed2", edit(lambda u: 0), "float_control", seed=2)
    q = make_system(recipe, "asr_s_w4", edit(lambda u: 1 if u < 12 else 0), "qat", weight_bits=4)
    report.report(base, [q, ctrl, lucky], "test", "dev", str(recipe / "RESULTS.md"), DECODE)
    for s in (q, lucky):                      # the control's first seed is the reference; seed 2 is compared
        assert json.load(open(os.path.join(s, DECODE, "test", "mapsswe", "result.json")))["baseline"] == \
            "asr_s_fp32_cont"


def test_mixed_precision_system_gets_a_bit_allocation_plot(recipe):
    base = make_system(recipe, "asr_z", edit(lambda u: 0))
    q = make_system(recipe, "asr_z_mpq", edit(lambda u: 0), "qat", weight_bits=5.5, description="mixed QAT, weights",
                    bits_per_layer={"encoder.encoders.0.w": 8, "encoder.encoders.1.w": 3})
    text = "\n".join(report.report(base, [q], "test", "dev", str(recipe / "RESULTS.md"), DECODE))
    assert "results/asr_z_mpq_bits.png" in text and "|asr_z_mpq|mixed QAT, weights|5.50|" in text
    assert os.path.getsize(recipe / "results" / "asr_z_mpq_bits.png") > 1000
    assert "## Mixed precision at equal budget" not in text      # per-layer bits, but no budget (not an MPQ method)
    assert "Bits of the output layers" not in text                # it has none of them
    q2 = make_system(recipe, "asr_z_mpq2", edit(lambda u: int(u == 0)), "qat", weight_bits=4.5, size=500,
                     description="mixed QAT, weights", bits_per_layer={"encoder.encoders.0.w": 8, "ctc.ctc_lo": 1})
    lines = report.report(base, [q, q2], "test", "dev", str(recipe / "RESULTS.md"), DECODE)
    head = next(i for i, l in enumerate(lines) if l.startswith("Bits of the output layers"))
    assert lines[head + 2] == "|system|method|seed|stored bits|`ctc.ctc_lo`|test WER|"   # the layers some system has
    wer = report.System(q2, [DECODE], False).wer["test"]
    assert wer > 0 and lines[head + 4:head + 6] == ["|asr_z_mpq|mixed QAT, weights|0|8.00||0.0|",
                                                    f"|asr_z_mpq2|mixed QAT, weights|0|4.00|1|{wer:.1f}|"]


def test_equal_budget_table_names_methods_and_splits_compression_time(recipe):
    base = make_system(recipe, "asr_m", edit(lambda u: 0))
    mixed = {"bits_per_layer": {"a": 2, "b": 4}, "weight_bits": 3.0, "size": 370}   # 3.0 weight bits, 2.96 stored
    one = make_system(recipe, "asr_m_one", edit(lambda u: 0), "one_stage", budget={"avg_bits": 3},
                      times=[("train", 300), ("pack", 12)], **mixed)
    kl = make_system(recipe, "asr_m_kl", edit(lambda u: 1 if u < 2 else 0), "kl", budget={"avg_bits": 3.0},
                     times=[("search", 240), ("train", 300), ("pack", 12)], **mixed)
    w3 = make_system(recipe, "asr_m_w3", edit(lambda u: 1 + u % 2), "qat", weight_bits=3, size=420)   # 3.36 stored
    other = make_system(recipe, "asr_m_w4", edit(lambda u: 0), "qat", weight_bits=4, size=560)      # 4.48 stored
    w2 = make_system(recipe, "asr_m_w2", edit(lambda u: 2), "qat", weight_bits=2, size=300)         # 2.40 stored
    w1 = make_system(recipe, "asr_m_w1", edit(lambda u: 3), "qat", weight_bits=1, size=190)         # 1.52 stored
    w3_ptq = make_system(recipe, "asr_m_w3_ptq", edit(lambda u: 1 + u % 2), "ptq", weight_bits=3, size=420)
    w3_layers = make_system(recipe, "asr_m_w3_layers", edit(lambda u: 0), "qat", weight_bits=3,   # per-layer bits
                            bits_per_layer={"a": 2, "b": 4}, description="mixed QAT, weights", size=370)
    half = make_system(recipe, "asr_m_one_half", edit(lambda u: 1 if u == 4 else 0), "one_stage",
                       budget={"avg_bits": 3}, times=[("train", 150), ("pack", 12)], **mixed)
    sn = make_system(recipe, "asr_m_sn", edit(lambda u: 0), "supernet", budget={"size_mb": 1.2}, **mixed)
    pinned = make_system(recipe, "asr_m_one_out8", edit(lambda u: 0), "one_stage", budget={"avg_bits": 3},
                         conf={"quantization": {"bits": {"b": 4}, "mixed_precision": {"budget": {"avg_bits": 3}}}},
                         times=[("train", 300), ("pack", 12)], **mixed)
    lines = report.report(base, [one, half, kl, w3, other, w2, w1, w3_ptq, w3_layers, sn, pinned], "test", "dev",
                          str(recipe / "RESULTS.md"), DECODE)
    i = lines.index("### Budget 3 stored bits (10.67x)")
    rows = {r.split("|")[1]: r.split("|") for r in lines[i:lines.index("## Seeds and intervals (test)")]
            if r.startswith("|asr_m")}
    rows = {k: v for k, v in rows.items() if k in ("asr_m_one", "asr_m_kl", "asr_m_w3", "asr_m_w4")}
    block = lines[i + 4: lines.index("", i + 3)]
    # the uniform systems storing nearest the budget (3 stored bits) on either side are shown beside it: w2 below,
    # w3 above with its PTQ twin of the same size; not w1 nor w4 (further away), nor a QAT system with per-layer bits
    assert [r.split("|")[1] for r in block] == ["asr_m_one", "asr_m_one_half", "asr_m_kl", "asr_m_w3", "asr_m_w2",
                                                "asr_m_w3_ptq", "asr_m_one_out8"]
    # a search with layers pinned out of it (bits: entries in its conf) is a method of its own in the tables
    assert block[-1].split("|")[2] == "one-stage MPQ, layers pinned" and block[0].split("|")[2] == "one-stage MPQ"
    j = lines.index("### Budget 1.2 MB")                                   # a size budget: its own table
    assert [r.split("|")[1] for r in lines[j + 4: lines.index("", j + 3)]] == ["asr_m_sn"]
    assert rows["asr_m_one"][2] == "one-stage MPQ" and rows["asr_m_kl"][2] == "two-stage MPQ (KL)"
    assert rows["asr_m_kl"][4] == "2.96 (10.81x)"                               # stored bits (ratio)
    assert rows["asr_m_kl"][6] == "0.74 ± 0.00"             # 2 errors in 270 words, unrounded (sclite says 0.7)
    # search, fine-tuning, pack, total (min) of the first seed, wall and CPU over one-stage's
    assert rows["asr_m_kl"][8:14] == ["4.0", "5.0", "0.2", "9.2", "1.77x", "1.77x"]
    assert rows["asr_m_one"][8:14] == ["0.0", "5.0", "0.2", "5.2", "1.00x", "1.00x"]
    assert rows["asr_m_w3"][7] == "0 of 1" and rows["asr_m_one"][7] == "1 of 1"
    # the one-stage conf tested against each other conf of its budget, per seed, and over the seeds
    assert rows["asr_m_one"][14] == "" and rows["asr_m_kl"][14].startswith("s0: -2 errors, p ")
    assert rows["asr_m_w3"][14].startswith("s0: -45 errors, p <0.001 (**sig.**); mean ")
    lo, hi = rows["asr_m_w3"][14].split("[")[1].rstrip("]").split(", ")
    assert float(hi) < 0                                                    # one-stage better: the interval below 0
    assert os.path.exists(os.path.join(one, DECODE, "test", "mapsswe_vs", "asr_m_kl", "result.json"))
    # a second one-stage conf (e.g. shorter fine-tuning) is tested against the other methods too
    line = next(x for x in lines[i:] if x.startswith("asr_m_one_half against the others"))
    assert "asr_m_kl (3.41x): s0: -1 errors, p " in line and "asr_m_one" not in line.split(": ", 1)[1]
    assert "asr_m_w3: s0: -44 errors, p <0.001 (**sig.**)" in line          # untimed: no CPU ratio
    assert "![WER against size, seeds together](results/wer_vs_size_seeds.png)" in lines
    assert os.path.getsize(recipe / "results" / "wer_vs_size_seeds.png") > 1000


def test_errors_are_clear_and_leave_results_alone(recipe):
    base = make_system(recipe, "asr_e", edit(lambda u: 0), sets=("dev",))
    q = make_system(recipe, "asr_e_w4", edit(lambda u: 0), "qat", weight_bits=4)
    out = recipe / "RESULTS.md"
    out.write_text("earlier results\n")
    with pytest.raises(ScoringError, match="not scored on test"):
        report.report(base, [q], "test", "dev", str(out), DECODE)
    with pytest.raises(ScoringError, match="float32 system"):              # a quantized system as the baseline
        report.report(q, [base], "test", "dev", str(out), DECODE)
    # the same set scored against different references
    base2 = make_system(recipe, "asr_f", edit(lambda u: 0))
    q2 = make_system(recipe, "asr_f_w4", edit(lambda u: 0), "qat", weight_bits=4)
    ref = os.path.join(q2, DECODE, "test", "score_wer", "ref.trn")
    with open(ref) as f:
        lines = f.readlines()
    with open(ref, "w") as f:
        f.writelines(lines[1:])
    with pytest.raises(ScoringError, match="different references"):
        report.report(base2, [q2], "test", "dev", str(out), DECODE)
    assert out.read_text() == "earlier results\n"
    with pytest.raises(SystemExit, match="results: .*nothing/system.yaml: missing"):
        results.main(["--baseline", str(recipe / "exp" / "nothing"), "--out", str(out)])
    assert out.read_text() == "earlier results\n"


def test_system_record_missing_or_incomplete_is_one_clear_error(recipe):
    base = make_system(recipe, "asr_r", edit(lambda u: 0))
    q = make_system(recipe, "asr_r_w4", edit(lambda u: 0), "qat", weight_bits=4)
    path = os.path.join(q, "system.yaml")
    assert read_system(q) == yaml.safe_load(open(path))
    out = recipe / "RESULTS.md"
    out.write_text("earlier results\n")

    def fails(match):
        with pytest.raises(RecordError, match=match) as e:
            report.report(base, [q], "test", "dev", str(out), DECODE)
        assert "\n" not in str(e.value) and str(e.value).startswith(path + ":")
        assert out.read_text() == "earlier results\n"

    good = record("asr_r_w4", "qat", weight_bits=4)
    for key in ("sizes", "description", "training"):                      # a key missing (even a nullable one)
        (recipe / "exp" / "asr_r_w4" / "system.yaml").write_text(
            yaml.safe_dump({k: v for k, v in good.items() if k != key}))
        fails(f"not a valid system record: missing keys {key}$")
    bad = [({"method": "qat8"}, "method 'qat8' is not one of float, "),
           ({"system": "asr_r_w8"}, "system 'asr_r_w8' is not the dir's name 'asr_r_w4'"),
           ({"sizes": {"disk_bytes": 10}}, "sizes lacks fp32_bytes, accounted_bytes"),
           ({"compression_time": {"total_s": 1.0}}, "compression_time lacks search_s"),
           ({"method": "kl"}, "method kl needs a budget"),
           ({"is_float": True}, "is_float True does not fit method qat"),
           ({"weight_bits": None}, "weight_bits is null"),
           ({"format": 2}, "format 2, this reader knows format 1"),
           ({"method": "all_in_one"}, "method all_in_one needs twin: the exp dir name of its twin, not None")]
    for change, match in bad:
        (recipe / "exp" / "asr_r_w4" / "system.yaml").write_text(yaml.safe_dump({**good, **change}))
        fails(match)
    (recipe / "exp" / "asr_r_w4" / "system.yaml").write_text("format: 1\nsystem: [asr\n")
    fails("system.yaml:3: not valid YAML")
    (recipe / "exp" / "asr_r_w4" / "system.yaml").write_text("- a list\n")
    fails("not a system record")
    os.remove(path)
    fails("system.yaml: missing")
    with pytest.raises(SystemExit, match=f"^results: {re.escape(path)}: missing"):
        results.main(["--baseline", base, "--systems", q, "--decode", DECODE, "--out", str(out)])
    assert out.read_text() == "earlier results\n"


def test_lossless_means_on_every_test_set_under_every_decode(recipe):
    """A system as good as the float one under the LM decode but worse under the acoustic decode is not lossless;
    the held-out set (dev) does not count."""
    acoustic = "decode_acoustic_packed"
    base = make_system(recipe, "asr_x", edit(lambda u: 0), sets=("dev", "test"), size=4000)
    make_system(recipe, "asr_x", edit(lambda u: 0), sets=("test",), decode=acoustic, size=4000)
    q = make_system(recipe, "asr_x_w4", edit(lambda u: 1 if u == 5 else 0), "qat", sets=("test",), weight_bits=4,
                    size=1000)
    make_system(recipe, "asr_x_w4", edit(lambda u: 1 + u % 2), "qat", sets=("test",), decode=acoustic, weight_bits=4,
                size=1000)
    make_system(recipe, "asr_x_w4", edit(lambda u: 1 + u % 2), "qat", sets=("dev",), weight_bits=4, size=1000)
    lines = report.report(base, [q], "test", "dev", str(recipe / "RESULTS.md"), f"{DECODE} {acoustic}")
    head = next(line for line in lines if line.startswith("|system|")).split("|")
    row = next(line for line in lines if line.startswith("|asr_x_w4|")).split("|")
    col = {h: i for i, h in enumerate(head)}
    assert row[col["lossless on test"]] == "yes"
    assert row[col["lossless on every test set and decode"]] == "**no** (test (acoustic))"   # dev is worse too: not counted
    assert "|test (acoustic)|asr_x_w4|asr_x|" in "\n".join(lines)                  # the verdict is shown
    assert "no quantized system is lossless on every test set and decode" in "\n".join(lines)
    # on test under the LM decode alone it is, under the acoustic one not
    assert "|method|test|test (acoustic)|" in lines and "|uniform QAT, weights|4.00x (asr_x_w4)|none|" in lines


def test_seeds_are_one_row_with_mean_sd_verdicts_and_a_bootstrap_interval(recipe):
    """Two seeds of a conf (<name>, <name>_seed2): WER mean and sd over seeds, lossless in k of n, and the
    paired bootstrap interval of the mean WER difference, which holds the difference and is narrow when
    the errors are spread evenly."""
    from mpq_plugins.eval.significance import bootstrap_interval
    base = make_system(recipe, "asr_x", edit(lambda u: 0), size=4000)
    one = make_system(recipe, "asr_x_w4", edit(lambda u: 1 if u % 3 == 0 else 0), "qat", weight_bits=4, size=1000,
                      seed=1)
    two = make_system(recipe, "asr_x_w4_seed2", edit(lambda u: 1 + u % 2), "qat", weight_bits=4, size=1000, seed=2)
    lines = report.report(base, [one, two], "test", "dev", str(recipe / "RESULTS.md"), DECODE)
    i = lines.index("## Seeds and intervals (test)")
    rows = [line.split("|") for line in lines[i:] if line.startswith("|asr_x_w4|")]
    assert len(rows) == 1
    r = rows[0]
    w1 = 100 * sum(1 for u in range(len(REF)) if u % 3 == 0) / 270
    w2 = 100 * sum(1 + u % 2 for u in range(len(REF))) / 270
    mean, sd = (w1 + w2) / 2, abs(w1 - w2) / 2 ** 0.5
    assert r[3] == "1, 2"                                               # the seeds of the records
    assert r[4] == f"{mean:.2f} ± {sd:.2f}" and r[5] == "1 of 2"
    diff, lo, hi = bootstrap_interval([os.path.join(p, DECODE, "test", "score_wer", "hyp.trn.sgml") for p in (one, two)],
                                      os.path.join(base, DECODE, "test", "score_wer", "hyp.trn.sgml"))
    assert diff == pytest.approx(mean) and lo < diff < hi and hi - lo < diff
    assert r[6] == f"{diff:+.2f}" and r[7] == f"[{lo:+.2f}, {hi:+.2f}]"


def test_equal_budget_compression_time_is_the_mean_over_the_seeds_that_timed_it():
    from types import SimpleNamespace as S
    parts = lambda search, train: {"search": search, "train": train, "pack": 6.0}
    seeds = [S(compress_parts=parts(240, 600), compress_wall=846.0, compress_cpu=900.0),
             S(compress_parts=parts(300, 720), compress_wall=1026.0, compress_cpu=1100.0),
             S(compress_parts=None, compress_wall=None, compress_cpu=None)]     # a seed without its timing
    t = report.mean_time(seeds)
    assert t == {"search": 270.0, "train": 660.0, "pack": 6.0, "wall": 936.0, "cpu": 1000.0}
    assert report.mean_time(seeds[2:]) is None


def test_two_systems_compared_on_every_set_and_decode_both_have(recipe, capsys):
    from mpq_plugins.bin import compare_systems
    a = make_system(recipe, "asr_x_w4", edit(lambda u: 1 if u < 3 else 0), "qat", weight_bits=4,   # 3 errors
                    sets=("dev", "test"))
    b = make_system(recipe, "asr_x_w2", edit(lambda u: 1 + u % 2), "qat", weight_bits=2)             # 45 errors
    make_system(recipe, "asr_x_w2", edit(lambda u: 0), "qat", weight_bits=2, decode="decode_acoustic_packed")
    out = recipe / "pair.md"
    compare_systems.main([a, b, "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    rows = [line.split("|") for line in printed.splitlines() if line.startswith("|decode_")]
    assert [(r[1], r[2]) for r in rows] == [(DECODE, "test")]            # dev: A only; acoustic: B only
    assert rows[0][3:7] == ["270", "1.1", "16.7", "+42"] and rows[0][8] == "B significantly worse"
    low, high = (float(x) for x in rows[0][9].split("[")[1].rstrip("]").split(", "))
    assert 0 < low < 42 / 270 * 100 < high
    r = json.load(open(os.path.join(b, DECODE, "test", "mapsswe_vs_asr_x_w4", "result.json")))
    assert (r["err_a"], r["err_b"], r["tool"]) == (3, 45, "sc_stats")
    with pytest.raises(SystemExit, match="compared with itself"):
        compare_systems.main([a, a])
    empty = recipe / "exp" / "asr_x_none"
    empty.mkdir()
    with pytest.raises(SystemExit, match="asr_x_none: no sclite scores"):
        compare_systems.main([a, str(empty)])
    other = make_system(recipe, "asr_x_w3", edit(lambda u: 0), "qat", weight_bits=3, sets=("dev",), decode="decode_other")
    with pytest.raises(SystemExit, match="share no decode and test set"):
        compare_systems.main([b, other])


def _write_records(exp_dir, rec, n):
    from mpq_plugins.record import write_system
    for _ in range(n):
        write_system(exp_dir, rec)


def test_two_processes_recording_one_system_at_once_both_succeed(tmp_path):
    """Two recipes running stage 6 beside each other both record the float model they share: neither
    may rename the other's half-written temporary file away (it did, and one recipe stopped)."""
    import multiprocessing
    exp = tmp_path / "asr_r"
    exp.mkdir()
    rec = record("asr_r")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_records, args=(str(exp), rec, 150)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert read_system(str(exp)) == rec and os.listdir(exp) == ["system.yaml"]


def test_the_global_plots_leave_all_in_one_systems_to_their_own_section(recipe, monkeypatch):
    base = make_system(recipe, "asr_x", edit(lambda u: 0), "float", sets=("test",))
    w4 = make_system(recipe, "asr_x_w4", edit(lambda u: 1 if u < 3 else 0), "qat", weight_bits=4)
    twin = make_system(recipe, "asr_x_aio_d1_ff1_w4_twin", edit(lambda u: 1), "qat", weight_bits=4)
    nested = make_system(recipe, "asr_x_aio_d1_ff1_w4", edit(lambda u: 2), "qat", weight_bits=4)
    for d, method, extra in ((twin, "all_in_one_twin", {}), (nested, "all_in_one", {"twin": os.path.basename(twin)})):
        rec = yaml.safe_load(open(os.path.join(d, "system.yaml")))
        rec.update(method=method, description=method.replace("_", " "), quant_conf="conf/quant/aio.yaml", **extra)
        open(os.path.join(d, "system.yaml"), "w").write(yaml.safe_dump(rec))
    drawn = {}
    monkeypatch.setattr(report.plots, "wer_vs_size", lambda points, path, *a: drawn.setdefault("all", points))
    monkeypatch.setattr(report.plots, "pareto", lambda points, path, *a, **k: drawn.setdefault(os.path.basename(path), points))
    results.main(["--baseline", base, "--systems", f"{w4} {twin} {nested}", "--out", str(recipe / "RESULTS.md")])
    assert [p["name"] for p in drawn["all"]] == ["asr_x", "w4"]
    assert "aio_seed0_all_in_one.png" in drawn and len(drawn["aio_seed0_all_in_one.png"]) == 2   # nested, twin
    text = (recipe / "RESULTS.md").read_text()
    assert "leave the all-in-one systems to their own section's plots" in text and "|asr_x_aio_d1_ff1_w4|" in text


def test_a_nested_system_is_compared_with_its_twin_once_while_its_alignments_stay(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(report, "compare", lambda a, b, na, nb, out: calls.append((a, b)) or {"n": len(calls)})
    monkeypatch.setattr(report, "_TWIN", {})

    class Sys:
        def __init__(self, name):
            self.name = name
            self.decode_dirs = {"d": str(tmp_path / name)}
            (tmp_path / f"{name}.sgml").write_text(name)

        def sgml(self, d):
            return str(tmp_path / f"{self.name}.sgml")

    n, t = Sys("nested"), Sys("twin")
    assert report.against_twin(n, t, "d") == {"n": 1}
    assert report.against_twin(n, t, "d") == {"n": 1} and len(calls) == 1
    (tmp_path / "twin.sgml").write_text("rescored twin")          # the twin rescored: compared again
    assert report.against_twin(n, t, "d") == {"n": 2} and len(calls) == 2
