"""The report stage on hand-made systems: real sclite and sc_stats on hand-written hypotheses, the
float reference chosen per test set, the lossless verdicts, the table, the plots and the errors."""
import json
import os

import pytest

from mpq_plugins.bin import results
from mpq_plugins.scoring import ScoringError, score_dir
from mpq_plugins.significance import two_tailed_p

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/lib/sctk/bin/sc_stats"), reason="SCTK not installed")

DECODE = "decode_asr_packed"
N = 30
REF = {f"spk{u % 3}_{u:03d}": "the cat sat on the mat near the door" for u in range(N)}


def write_text(path, texts):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for k in sorted(texts):
            f.write(f"{k} {texts[k]}\n".replace("  ", " "))


def make_system(root, name, hyps, quant=None, size=1000, sets=("test",)):
    exp = root / "exp" / name
    for s in sets:
        d = exp / DECODE / s
        write_text(str(d / "text"), hyps)
        score_dir(str(root / "data" / s / "text"), str(d / "text"), str(root / "data" / s / "utt2spk"), str(d))
    (exp / "config.yaml").write_text(json.dumps({"quantization": quant} if quant else {}))
    bits = {"a": 4, "b": 4} if quant else {}
    (exp / "packed.size.json").write_text(json.dumps({
        "disk_bytes": size, "compression_ratio": 4000 / size, "avg_weight_bits": 4.0 if quant else 32.0,
        "quantized_fraction": 0.9 if quant else 0.0, "bits_per_layer": bits}))
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
    base = make_system(recipe, "asr_x", edit(lambda u: 1 if u < 2 else 0), size=4000)        # 2 errors
    ctrl = make_system(recipe, "asr_x_fp32_cont", edit(lambda u: 0), size=4000)               # perfect
    good = make_system(recipe, "asr_x_w8", edit(lambda u: 1 if u == 5 else 0), {"weight_bits": 8}, size=1000)
    bad = make_system(recipe, "asr_x_w2", edit(lambda u: 1 + u % 2), {"weight_bits": 2}, size=250)
    out = str(recipe / "RESULTS.md")
    lines = results.report(base, [good, bad, ctrl], "test", "dev", out, DECODE)
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
    row = {line.split("|")[1]: line.split("|") for line in lines if line.startswith("|asr_x")}
    head = next(line for line in lines if line.startswith("|system|")).split("|")
    col = {h: i for i, h in enumerate(head)}
    assert row["asr_x_w8"][col["lossless"]] == "yes" and row["asr_x_w2"][col["lossless"]] == "**no**"
    assert row["asr_x_fp32_cont"][col["test change (abs / rel)"]] == "reference"
    assert row["asr_x_w2"][col["test WER"]] == "16.7"                     # 45 / 270 words
    assert row["asr_x_w2"][col["test change (abs / rel)"]].startswith("+16.7")
    assert row["asr_x_w8"][col["ratio"]] == "4.00x"
    assert "|uniform QAT, weights|4.00x|asr_x_w8|" in text                # highest lossless ratio per method
    assert os.path.getsize(recipe / "results" / "wer_vs_size.png") > 1000


def test_baseline_better_than_control_is_the_reference(recipe):
    base = make_system(recipe, "asr_y", edit(lambda u: 0))
    ctrl = make_system(recipe, "asr_y_fp32_cont", edit(lambda u: 1 if u < 3 else 0))
    q = make_system(recipe, "asr_y_w4", edit(lambda u: 0), {"weight_bits": 4})
    results.report(base, [q, ctrl], "test", "dev", str(recipe / "RESULTS.md"), DECODE)
    r = json.load(open(os.path.join(q, DECODE, "test", "mapsswe", "result.json")))
    assert r["baseline"] == "asr_y" and r["z"] != r["z"] or r["p"] == 1.0   # identical output: no difference
    r_ctrl = json.load(open(os.path.join(ctrl, DECODE, "test", "mapsswe", "result.json")))
    assert r_ctrl["baseline"] == "asr_y"                                   # the control is tested too


def test_mixed_precision_system_gets_a_bit_allocation_plot(recipe):
    base = make_system(recipe, "asr_z", edit(lambda u: 0))
    q = make_system(recipe, "asr_z_mpq", edit(lambda u: 0), {"weight_bits": 4, "bits": {"a": 8}})
    size = json.load(open(os.path.join(q, "packed.size.json")))
    size["bits_per_layer"] = {"encoder.encoders.0.w": 8, "encoder.encoders.1.w": 3}
    json.dump(size, open(os.path.join(q, "packed.size.json"), "w"))
    text = "\n".join(results.report(base, [q], "test", "dev", str(recipe / "RESULTS.md"), DECODE))
    assert "results/asr_z_mpq_bits.png" in text and "mixed QAT, weights" in text
    assert os.path.getsize(recipe / "results" / "asr_z_mpq_bits.png") > 1000


def made_by(exp, mixed, times):
    """What the quantize stage leaves beside a mixed-precision system: its quant conf and its times."""
    with open(os.path.join(exp, "quant_conf.yaml"), "w") as f:
        json.dump({"quantization": {"mixed_precision": mixed}}, f)
    with open(os.path.join(exp, "compression_time.json"), "w") as f:
        json.dump([{"what": w, "wall_s": t, "cpu_s": 2 * t, "rc": 0} for w, t in times], f)


def test_equal_budget_table_names_methods_and_splits_compression_time(recipe):
    base = make_system(recipe, "asr_m", edit(lambda u: 0))
    one = make_system(recipe, "asr_m_one", edit(lambda u: 0), {"weight_bits": 8, "mixed_precision": {}})
    kl = make_system(recipe, "asr_m_kl", edit(lambda u: 1 if u < 2 else 0), {"weight_bits": 8, "bits": {"a": 2}})
    w3 = make_system(recipe, "asr_m_w3", edit(lambda u: 1 + u % 2), {"weight_bits": 3})
    other = make_system(recipe, "asr_m_w4", edit(lambda u: 0), {"weight_bits": 4})
    half = make_system(recipe, "asr_m_one_half", edit(lambda u: 1 if u == 4 else 0),
                       {"weight_bits": 8, "mixed_precision": {}})
    made_by(one, {"method": "one_stage", "budget": {"avg_bits": 3}}, [("train", 300), ("pack", 12)])
    made_by(half, {"method": "one_stage", "budget": {"avg_bits": 3}}, [("train", 150), ("pack", 12)])
    made_by(kl, {"method": "kl", "budget": {"avg_bits": 3.0}}, [("search", 240), ("train", 300), ("pack", 12)])
    lines = results.report(base, [one, half, kl, w3, other], "test", "dev", str(recipe / "RESULTS.md"), DECODE)
    i = lines.index("### Budget 3 bits")
    rows = {r.split("|")[1]: r.split("|") for r in lines[i:] if r.startswith("|asr_m")}
    rows = {k: v for k, v in rows.items() if k in ("asr_m_one", "asr_m_kl", "asr_m_w3", "asr_m_w4")}
    block = lines[i + 4: lines.index("", i + 3)]
    assert [r.split("|")[1] for r in block] == ["asr_m_one", "asr_m_one_half", "asr_m_kl", "asr_m_w3"]  # not w4
    assert rows["asr_m_one"][2] == "one-stage MPQ" and rows["asr_m_kl"][2] == "two-stage MPQ (KL)"
    # search, fine-tuning, pack, total (min), time over one-stage
    assert rows["asr_m_kl"][9:14] == ["4.0", "5.0", "0.2", "9.2", "1.77x"]
    assert rows["asr_m_one"][9:14] == ["0.0", "5.0", "0.2", "5.2", "1.00x"]
    assert rows["asr_m_w3"][8] == "**no**" and rows["asr_m_one"][8] == "yes"
    # the one-stage system tested against each other system of its budget (A: the other, B: one-stage)
    assert rows["asr_m_one"][14] == "" and rows["asr_m_kl"][14].startswith("-2 errors, p ")
    assert rows["asr_m_w3"][14].startswith("-45 errors, p <0.001 (**sig.**)")
    assert os.path.exists(os.path.join(one, DECODE, "test", "mapsswe_vs", "asr_m_kl", "result.json"))
    # a second one-stage system (e.g. shorter fine-tuning) is tested against the other methods too
    line = next(x for x in lines[i:] if x.startswith("asr_m_one_half against the others"))
    assert "asr_m_kl: -1 errors, p " in line and "time 0.29x" in line     # 162 s against 552 s
    assert "asr_m_w3: -44 errors, p <0.001 (**sig.**)." in line and "asr_m_one:" not in line   # w3: no times


def test_errors_are_clear_and_leave_results_alone(recipe):
    base = make_system(recipe, "asr_e", edit(lambda u: 0), sets=("dev",))
    q = make_system(recipe, "asr_e_w4", edit(lambda u: 0), {"weight_bits": 4})
    out = recipe / "RESULTS.md"
    out.write_text("earlier results\n")
    with pytest.raises(ScoringError, match="not scored on test"):
        results.report(base, [q], "test", "dev", str(out), DECODE)
    with pytest.raises(ScoringError, match="float32 system"):              # a quantized system as the baseline
        results.report(q, [base], "test", "dev", str(out), DECODE)
    # the same set scored against different references
    base2 = make_system(recipe, "asr_f", edit(lambda u: 0))
    q2 = make_system(recipe, "asr_f_w4", edit(lambda u: 0), {"weight_bits": 4})
    ref = os.path.join(q2, DECODE, "test", "score_wer", "ref.trn")
    with open(ref) as f:
        lines = f.readlines()
    with open(ref, "w") as f:
        f.writelines(lines[1:])
    with pytest.raises(ScoringError, match="different references"):
        results.report(base2, [q2], "test", "dev", str(out), DECODE)
    assert out.read_text() == "earlier results\n"
    with pytest.raises(SystemExit, match="results: .*packed.size.json"):
        results.main(["--baseline", str(recipe / "exp" / "nothing"), "--out", str(out)])
    assert out.read_text() == "earlier results\n"
