"""All-in-one through run.sh on the tiny recipe (tests/recipe.py): one run trains the nested systems, each is
exported, packed, decoded and scored beside its twin, and the report compares them."""
import json
import re

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
    assert "In CPU time, which the jobs running beside them inflate less than wall-clock time" in results
    assert (recipe / "results" / "aio_tiny_seed1_all_in_one.png").exists()
    # "vs twin" is the nested system's errors minus its twin's (sclite's alignments of the two), with its sign
    from mpq_plugins.eval.significance import utterance_errors
    for name in ("d1_ff1_w4", "d1_ff0p5_w2"):
        errors = [sum(e for e, _ in utterance_errors(str(recipe / "exp" / f"asr_train_tiny_aio_tiny_{s}" / DECODE / "test"
                                                         / "score_wer" / "hyp.trn.sgml")).values())
                  for s in (name, name + "_twin")]
        section = results.split("### aio_tiny (seed 1)")[1]
        row = next(line for line in section.splitlines() if line.startswith(f"|asr_train_tiny_aio_tiny_{name}|"))
        assert f"; {errors[0] - errors[1]:+d}, p " in row
        vs = json.loads((recipe / "exp" / f"asr_train_tiny_aio_tiny_{name}" / DECODE / "test" / "mapsswe_vs"
                         / f"asr_train_tiny_aio_tiny_{name}_twin" / "result.json").read_text())
        assert vs["err_b"] - vs["err_a"] == errors[0] - errors[1] and ("(**sig.**)" in row) == vs["significant"]


def test_a_conf_with_twins_from_reuses_the_other_confs_twins_and_checks_they_are_its_own(recipe):
    # (after the test above, which trained aio_tiny and its twins in this recipe)
    q = f"{ROOT}/tests/conf/quant"
    twins = {s: recipe / "exp" / f"asr_train_tiny_aio_tiny_{s}_twin" for s in ("d1_ff1_w4", "d1_ff0p5_w2")}
    before = {s: (d / "valid.acc.best.pth").stat().st_mtime for s, d in twins.items()}
    # a variant whose twins would train otherwise (another number of epochs) is refused before it trains
    (recipe / "aio_tiny_2ep.yaml").write_text(f"method: all_in_one\nbase: {q}/aio_tiny.yaml\n"
                                              f"twins_from: {q}/aio_tiny.yaml\nmax_epoch: 2\n")
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--quant_confs", str(recipe / "aio_tiny_2ep.yaml"))
    assert r.returncode != 0 and "was trained with another config than this conf gives it" in r.stderr, r.stderr[-2000:]
    assert not (recipe / "exp" / "asr_train_tiny_aio_tiny_2ep" / "valid.acc.best.pth").exists()
    # at a seed where the named conf trained no twins: refused too, naming what to run
    r = run(recipe, "--stage", "6", "--stop_stage", "6", "--seeds", "2", "--quant_confs", f"{q}/aio_tiny_balanced.yaml")
    assert r.returncode != 0 and "asr_train_tiny_aio_tiny_seed2_d1_ff1_w4_twin" in r.stderr, r.stderr[-2000:]
    assert "its twin" in r.stderr and "is not trained (run stage 6 with --quant_confs" in r.stderr and "--seeds 2" in r.stderr
    assert not (recipe / "exp" / "asr_train_tiny_aio_tiny_balanced_seed2" / "valid.acc.best.pth").exists()

    r = run(recipe, "--stage", "6", "--quant_confs", f"{q}/aio_tiny.yaml {q}/aio_tiny_balanced.yaml",
            "--quant_test_sets", "test", "--acoustic_config", "")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not list((recipe / "exp").glob("asr_train_tiny_aio_tiny_balanced_*_twin"))      # no twin trained again
    assert {s: (d / "valid.acc.best.pth").stat().st_mtime for s, d in twins.items()} == before
    for s, twin in twins.items():
        nested = recipe / "exp" / f"asr_train_tiny_aio_tiny_balanced_{s}"
        assert yaml.safe_load((nested / "system.yaml").read_text())["twin"] == twin.name
        assert (nested / DECODE / "test" / "score_wer" / "result.txt").exists()
    results = (recipe / "RESULTS.md").read_text()
    section = results.split("### aio_tiny_balanced (seed 1)")[1].split("###")[0]
    assert "Its twins are those of " in section and "aio_tiny.yaml (`twins_from`" in section
    for s in twins:
        row = next(line for line in section.splitlines() if line.startswith(f"|asr_train_tiny_aio_tiny_balanced_{s}|"))
        assert " / -" not in row and re.search(r"; [+-]\d+, p ", row), row      # beside its twin
    assert results.count("\n## asr_train_tiny_aio_tiny_d1_ff1_w4_twin\n") == 1   # each twin reported once


def test_an_all_in_one_conf_over_seeds_is_one_table_of_means_intervals_and_times(recipe):
    # (after the tests above: aio_tiny and its twins are trained at seed 1; this trains seed 2)
    from mpq_plugins.eval.report import exact_wer, mean_sd
    from mpq_plugins.eval.significance import utterance_errors
    r = run(recipe, "--stage", "6", "--seeds", "1 2", "--quant_confs", f"{ROOT}/tests/conf/quant/aio_tiny.yaml",
            "--quant_test_sets", "test", "--acoustic_config", "")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = recipe / "exp"
    assert yaml.safe_load((exp / "asr_train_tiny_aio_tiny_seed2_d1_ff1_w4" / "system.yaml").read_text())["twin"] \
        == "asr_train_tiny_aio_tiny_seed2_d1_ff1_w4_twin"
    results = (recipe / "RESULTS.md").read_text()
    section = results.split("### aio_tiny over seeds 1, 2\n")[1].split("\n### ")[0]
    assert "### aio_tiny (seed 1)" in results and "### aio_tiny (seed 2)" in results   # each run on its own too
    for name in ("d1_ff1_w4", "d1_ff0p5_w2"):
        row = next(line for line in section.splitlines() if line.startswith(f"|asr_train_tiny_aio_tiny_{name}|1, 2|"))
        wers = {}
        for side, suffix in (("nested", ""), ("twin", "_twin")):
            errors = [utterance_errors(str(exp / f"asr_train_tiny_aio_tiny{seed}_{name}{suffix}" / DECODE / "test"
                                           / "score_wer" / "hyp.trn.sgml")) for seed in ("", "_seed2")]
            wers[side] = mean_sd([exact_wer(e) for e in errors])
        # the means and sds over the two seeds, and the difference of the means inside its interval
        assert "|{:.2f} ± {:.2f} / {:.2f} ± {:.2f}|".format(*wers["nested"], *wers["twin"]) in row, row
        diff, lo, hi = (float(v) for v in re.search(r"\|([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]\|", row).groups())
        assert abs(diff - (wers["nested"][0] - wers["twin"][0])) < 0.006 and lo <= diff <= hi, row
        assert re.search(r"\|\d / \d of 2\|\d of 2\|$", row), row
    assert re.search(r"wall-clock [\d.]+x \(seed 1\), [\d.]+x \(seed 2\), mean [\d.]+x; CPU time", section), section
    assert (recipe / "results" / "aio_tiny_seeds_all_in_one.png").exists()
    # the seeds table takes a nested system's seeds as one row, as it does any conf's
    seeds = results.split("## Seeds and intervals")[1].split("\n## ")[0]
    assert "|asr_train_tiny_aio_tiny_d1_ff1_w4|all-in-one nested system|1, 2|" in seeds, seeds
    assert "|asr_train_tiny_aio_tiny_d1_ff1_w4_twin|" in seeds and "aio_tiny_seed2" not in seeds
