"""The tuning record (mpq_plugins.eval.tuning, bin/tuning_table.py) on hand-made runs: the option read from
the runs' composed confs, real sclite and sc_stats on hand-written hypotheses, the value kept only when
significantly better, and clear errors."""
import pytest
import yaml

from mpq_plugins.bin import tuning_table
from mpq_plugins.eval.tuning import group_rows, option_of
from tests.test_report import DECODE, edit, make_system, pytestmark, recipe  # noqa: F401


def kl_run(root, name, n_utts, errors_of, sets=("dev",), method="kl"):
    d = make_system(root, name, edit(errors_of), method=method, weight_bits=3, sets=sets, budget={"avg_bits": 2.5})
    rec = yaml.safe_load(open(f"{d}/system.yaml"))
    rec["quant_conf"] = f"conf/quant/{'tuning/' if '_' in name else ''}{name}.yaml"
    rec["conf"] = {"method": method, "quantization": {"mixed_precision": {"budget": {"avg_bits": 2.5}, "n_utts": n_utts}}}
    open(f"{d}/system.yaml", "w").write(yaml.safe_dump(rec))
    return d


def test_option_is_what_the_composed_confs_differ_in():
    a = {"method": "kl", "quantization": {"mixed_precision": {"n_utts": 16, "candidates": [2, 3, 4]}}}
    b = {"method": "kl", "quantization": {"mixed_precision": {"n_utts": 8, "candidates": [2, 3, 4]}}}
    assert option_of([a, b]) == ["quantization.mixed_precision.n_utts"]
    assert option_of([a, a]) == []


def test_a_significantly_better_value_is_kept_and_a_small_gain_is_only_marked(recipe, tmp_path):
    conf = kl_run(recipe, "kl", 16, lambda u: 1 + u % 2)               # 45 errors
    worse = kl_run(recipe, "kl_utts8", 8, lambda u: 3 + u % 3)         # 120: significantly worse
    better = kl_run(recipe, "kl_utts32", 32, lambda u: int(u % 3 == 0))   # 10: significantly better
    rows = group_rows([conf, worse, better], DECODE, "dev")
    assert [r["values"] for r in rows] == ["16", "8", "32"] and rows[0]["option"] == "n_utts"
    assert [r["errors"] for r in rows] == [45, 120, 10] and rows[0]["vs_first"] is None
    assert rows[1]["vs_first"]["significant"] and rows[2]["vs_first"]["significant"]
    assert [r["kept"] for r in rows] == [False, False, True]
    kept = tmp_path / "kept"
    tuning_table.main(["--groups", f"{conf},{worse},{better} {conf},{worse}", "--out", str(tmp_path / "t.md"),
                       "--kept", str(kept)])
    assert kept.read_text() == ("conf/quant/kl.yaml conf/quant/tuning/kl_utts32.yaml\n"   # what the budget runs
                                "conf/quant/kl.yaml conf/quant/kl.yaml\n")
    # one fewer error in one utterance: the lowest WER, not significant, so the conf's value stays
    close = kl_run(recipe, "kl_utts64", 64, lambda u: 1 + u % 2 - (u == 1))
    out = tmp_path / "tuning.md"
    tuning_table.main(["--groups", f"{conf},{worse},{close}", "--out", str(out)])
    table = out.read_text()
    row = {r.split("|")[4]: r for r in table.splitlines() if r.startswith("|two-stage MPQ (KL)|n_utts|")}
    assert row["kl"].endswith("|(the conf's value)||**yes**|"), row["kl"]
    assert "|44 (" in row["kl_utts64"] and "|-1, p " in row["kl_utts64"] and row["kl_utts64"].endswith("|yes||")
    assert "(**sig.**)" in row["kl_utts8"] and "mpq_plugins.bin.tuning_table --groups" in table


def test_bad_groups_are_one_clear_error_and_leave_the_record_alone(recipe, tmp_path, capsys):
    conf = kl_run(recipe, "kl", 16, lambda u: 1)
    out = tmp_path / "tuning.md"
    out.write_text("earlier record\n")
    cases = {
        "not decoded and scored on dev": f"{conf},{kl_run(recipe, 'kl_test_only', 8, lambda u: 1, sets=('test',))}",
        "mixes methods": f"{conf},{kl_run(recipe, 'hessian', 8, lambda u: 1, method='hessian')}",
        "one and the same quant conf": f"{conf},{kl_run(recipe, 'kl_again', 16, lambda u: 2)}",
        "at least one variant": conf,
        "system.yaml: missing": f"{conf},{recipe}/exp/nothing_here",
    }
    for problem, groups in cases.items():
        with pytest.raises(SystemExit) as e:
            tuning_table.main(["--groups", groups, "--out", str(out)])
        assert problem in str(e.value) and str(e.value).startswith("tuning_table: "), (problem, e.value)
    assert "kl_test_only/decode_asr_packed/dev/score_wer/hyp.trn.sgml missing" in str(
        pytest.raises(SystemExit, tuning_table.main, ["--groups", cases["not decoded and scored on dev"],
                                                     "--out", str(out)]).value)
    assert out.read_text() == "earlier record\n"
