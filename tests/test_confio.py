"""Quant confs: composition over a base, the method stated by each conf, and one clear error for a bad one."""
import glob
import os

import pytest

from mpq_plugins.confio import METHODS, ConfError, compose, merge, training_options
from tests.conftest import ROOT


def write(path, text):
    path.write_text(text)
    return str(path)


def test_every_shipped_conf_composes_and_states_its_method():
    confs = glob.glob(os.path.join(ROOT, "conf", "quant", "*.yaml")) + glob.glob(os.path.join(ROOT, "tests", "conf", "quant", "*.yaml"))
    confs += glob.glob(os.path.join(ROOT, "conf", "quant", "tuning", "*.yaml"))
    assert len(confs) > 20
    for path in confs:
        conf = compose(path)
        assert conf["method"] in METHODS
        with open(path) as f:
            assert any(line.startswith(f"method: {conf['method']}") for line in f)   # run.sh reads this line


def test_every_shipped_quantization_section_is_valid():
    from mpq_plugins.quant import QuantConfig
    confs = glob.glob(os.path.join(ROOT, "conf", "quant", "*.yaml")) + glob.glob(os.path.join(ROOT, "egs", "*", "conf", "quant", "*.yaml"))
    confs += glob.glob(os.path.join(ROOT, "conf", "quant", "tuning", "*.yaml"))
    for path in confs:
        conf = compose(path)
        if conf.get("quantization"):
            QuantConfig.from_dict(conf["quantization"], path)       # bit-widths, budgets, search options


def test_the_budget_sweep_lists_existing_confs_at_five_budgets_and_both_compute_levels():
    import subprocess
    out = subprocess.run([os.path.join(ROOT, "local", "budget_sweep.sh"), "--list"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert len(out) == len(set(out)) == 35 and all(os.path.exists(os.path.join(ROOT, p)) for p in out)
    budgets = {}
    for p in out:
        conf = compose(os.path.join(ROOT, p))
        mp = (conf.get("quantization") or {}).get("mixed_precision")
        if mp and "_half" not in p:
            budgets.setdefault(conf["method"], set()).add(mp["budget"]["avg_bits"])
    assert budgets == {m: {3.5, 3, 2.5, 2, 1.75} for m in ("one_stage", "kl", "hessian", "supernet")}
    halves = [compose(os.path.join(ROOT, p)) for p in out if "_half" in p]
    assert len(halves) == 6 and all(h["num_iters_per_epoch"] == 212 for h in halves)


def test_a_variant_is_its_base_with_a_few_keys_changed():
    base = compose(os.path.join(ROOT, "conf", "quant", "mpq_one_stage_3bit.yaml"))
    half = compose(os.path.join(ROOT, "conf", "quant", "mpq_one_stage_2p5bit_half.yaml"))
    mp, mp_half = base["quantization"]["mixed_precision"], half["quantization"]["mixed_precision"]
    assert mp_half == {**mp, "budget": {"avg_bits": 2.5}}          # search_fraction: half of its half run
    assert half["num_iters_per_epoch"] == 212 and "base" not in half
    assert training_options(half) == {k: v for k, v in half.items() if k != "method"}
    assert compose(os.path.join(ROOT, "conf", "quant", "w3.yaml"))["quantization"] == {"weight_bits": 3, "per_channel": True}


def test_merge_is_by_key_for_mappings_only():
    assert merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}


@pytest.mark.parametrize("text,message", [
    ("quantization: {weight_bits: 4}\n", "method None is not one of"),
    ("method: qatt\nquantization: {weight_bits: 4}\n", "method 'qatt' is not one of"),
    ("method: qat\n", "needs a quantization section"),
    ("method: float\nquantization: {weight_bits: 4}\n", "remove the quantization section"),
    ("method: one_stage\nquantization: {weight_bits: 4}\n", "needs a quantization: mixed_precision part"),
    ("method: qat\nquantization: {mixed_precision: {budget: {avg_bits: 3}}}\n", "takes fixed bit-widths"),
    ("method: qat\nbase: nothere.yaml\n", "base nothere.yaml: no such file"),
    ("method: qat\nbase: [1]\n", "base must be a path"),
    ("- 1\n", "not a config"),
    ("method: [\n", "cannot read config"),
])
def test_bad_confs_are_one_clear_error(tmp_path, text, message):
    path = write(tmp_path / "x.yaml", text)
    with pytest.raises(ConfError, match="x.yaml") as e:
        compose(path)
    assert message in str(e.value)


def test_base_loops_and_inherited_methods(tmp_path):
    write(tmp_path / "a.yaml", "method: qat\nbase: b.yaml\n")
    write(tmp_path / "b.yaml", "method: qat\nbase: a.yaml\n")
    with pytest.raises(ConfError, match="loop"):
        compose(str(tmp_path / "a.yaml"))
    write(tmp_path / "c.yaml", "method: qat\nquantization: {weight_bits: 4}\n")
    write(tmp_path / "d.yaml", "base: c.yaml\nquantization: {weight_bits: 3}\n")
    with pytest.raises(ConfError, match="every quant conf states its method"):
        compose(str(tmp_path / "d.yaml"))                     # the method is not inherited


AIO = "method: all_in_one\nquantization: {weight_bits: 4}\nall_in_one: {depth: [2, 1]}\n"


def test_twins_from_names_another_all_in_one_conf_and_is_not_inherited(tmp_path):
    write(tmp_path / "aio.yaml", AIO)
    write(tmp_path / "balanced.yaml", "method: all_in_one\nbase: aio.yaml\ntwins_from: aio.yaml\n"
                                      "all_in_one: {balance: largest}\n")
    conf = compose(str(tmp_path / "balanced.yaml"))
    assert conf["twins_from"] == "aio.yaml" and conf["all_in_one"] == {"depth": [2, 1], "balance": "largest"}
    assert "twins_from" not in training_options(conf)           # a recipe key, not an ESPnet option
    write(tmp_path / "variant.yaml", "method: all_in_one\nbase: balanced.yaml\n")
    assert "twins_from" not in compose(str(tmp_path / "variant.yaml"))   # stated by the conf itself, as run.sh reads it
    bad = [("method: qat\nquantization: {weight_bits: 4}\ntwins_from: aio.yaml\n", "twins_from is for method all_in_one"),
           (AIO + "twins_from: aio\n", "twins_from must name another all-in-one conf"),
           (AIO + "twins_from: nothere.yaml\n", "twins_from nothere.yaml: no such file"),
           (AIO + "twins_from: x.yaml\n", "names this conf itself"),
           (AIO + "twins_from: w4.yaml\n", "twins_from w4.yaml: method qat, not all_in_one"),
           (AIO + "twins_from: balanced.yaml\n", "trains no twins itself")]
    write(tmp_path / "w4.yaml", "method: qat\nquantization: {weight_bits: 4}\n")
    for text, message in bad:
        path = write(tmp_path / "x.yaml", text)
        with pytest.raises(ConfError, match="x.yaml") as e:
            compose(path)
        assert message in str(e.value)


def test_a_run_trained_with_another_token_list_is_not_resumed(tmp_path):
    from mpq_plugins.bin.check_resume import main
    from mpq_plugins.confio import resume_conflict
    exp, tokens = tmp_path / "exp" / "asr_x", tmp_path / "tokens.txt"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text("token_list:\n- <blank>\n- a\n- b\n")
    tokens.write_text("<blank>\na\nb\n")
    assert resume_conflict(str(exp), str(tokens)) is None            # no checkpoint: a fresh start
    (exp / "checkpoint.pth").write_bytes(b"x")
    assert resume_conflict(str(exp), str(tokens)) is None            # the same tokens: resumes
    tokens.write_text("<blank>\na\nb\nc\n")
    problem = resume_conflict(str(exp), str(tokens))
    assert f"{exp} was trained with another token list (3 tokens; {tokens} has 4 now)" in problem
    assert "--asr_tag" in problem
    with pytest.raises(SystemExit, match="check_resume: .*another token list"):
        main(["--exp_dir", str(exp), "--token_list", str(tokens)])


def test_every_shipped_training_and_decoding_config_is_read_by_its_parser():
    """Each recipe's ESPnet training configs parse with the task's parser (encoder, scheduler and model choices
    that exist, e.g. hf_ssl and tristagelr) and each decoding config with ours."""
    import yaml

    from mpq_plugins.espnet.decoding import read_decode_config
    from mpq_plugins.espnet.task import QuantASRTask
    paths = glob.glob(os.path.join(ROOT, "conf", "*.yaml")) + glob.glob(os.path.join(ROOT, "egs", "*", "conf", "*.yaml"))
    seen = {"train": 0, "decode": 0}
    for path in paths:
        with open(path) as f:
            conf = yaml.safe_load(f)
        if "search" in conf:
            read_decode_config(path)
            seen["decode"] += 1
        elif "encoder" in conf:
            QuantASRTask.get_parser().parse_args(["--config", path, "--output_dir", "o", "--token_list", "t"])
            seen["train"] += 1
    assert seen["train"] >= 4 and seen["decode"] >= 5


def test_the_results_queue_runs_every_conf_of_the_sweep_the_tuning_and_all_in_one():
    import subprocess
    run = lambda *a: subprocess.run([os.path.join(ROOT, "local", a[0]), *a[1:]], capture_output=True, text=True,  # noqa
                                    check=True).stdout.split()
    queued = run("results_queue.sh", "--list")
    assert all(os.path.exists(os.path.join(ROOT, p)) for p in queued)
    tuning = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "conf", "quant", "tuning", "*.yaml"))]
    aio = {"conf/quant/aio_d432_ff_w42.yaml", "conf/quant/aio_d432_ff_w42_balanced.yaml",
           "conf/quant/aio_d432_ff_w42_every.yaml"}
    assert set(run("budget_sweep.sh", "--list")) | set(tuning) | aio == set(queued)
    # the tuning record's groups: every tuning conf once, beside the conf it varies, which comes first
    groups = [g.split(",") for g in run("tuning_report.sh", "--list")]
    assert sorted(v for g in groups for v in g[1:]) == sorted(
        "exp/asr_train_asr_conformer_" + os.path.basename(t)[:-5] for t in tuning)
    assert all(v.startswith(g[0]) for g in groups for v in g[1:]) and len(groups) == 5
    # the conf's run and the variants' are decoded on dev (the record's set); only the conf's on test
    lines = open(os.path.join(ROOT, "local", "results_queue.sh")).read()
    assert 'sweep $1 dev 1 tuning/' in lines.replace("\\\n", " ")
    r = subprocess.run([os.path.join(ROOT, "local", "results_queue.sh"), "--go"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown option --go" in r.stderr
    r = subprocess.run([os.path.join(ROOT, "local", "results_queue.sh"), "--lane", "c"], capture_output=True, text=True)
    assert r.returncode != 0 and "--lane takes a or b, not 'c'" in r.stderr


def test_the_queue_runs_the_tuned_budget_with_the_conf_the_record_kept(tmp_path):
    """local/results_queue.sh itself, its run.sh and tuning_report.sh replaced by scripts that record their calls:
    the 2.5-bit budget waits for the tuning's record, then runs the variant kept, decoded on test this time."""
    import shutil
    import subprocess
    (tmp_path / "local").mkdir()
    shutil.copy(os.path.join(ROOT, "local", "results_queue.sh"), tmp_path / "local")
    (tmp_path / "run.sh").write_text('#!/bin/bash\necho "$*" >> calls\n')
    (tmp_path / "local" / "tuning_report.sh").write_text(
        '#!/bin/bash\n[ -f complete ] || { echo "not decoded on dev" >&2; exit 1; }\n'
        'echo "conf/quant/mpq_one_stage_2p5bit_teacherkl.yaml conf/quant/tuning/mpq_one_stage_2p5bit_teacherkl_lr8.yaml'
        '\nconf/quant/mpq_kl_2p5bit.yaml conf/quant/mpq_kl_2p5bit.yaml" > "$4"\n')
    for f in ("run.sh", "local/tuning_report.sh"):
        os.chmod(tmp_path / f, 0o755)

    def queue():
        subprocess.run(["local/results_queue.sh", "--lane", "a"], cwd=tmp_path, check=True, timeout=120)
        calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
        (tmp_path / "calls").unlink(missing_ok=True)
        return [c for c in calls if "2p5bit" in c and "_half" not in c and "dev" not in c]

    assert queue() == []                                # the record is not complete: the budget waits
    assert "the 2.5-bit budget waits for it" in (tmp_path / "exp" / "queue" / "queue.log").read_text()
    (tmp_path / "complete").touch()
    tier = queue()
    confs = [c.split("--quant_confs ")[1].split()[0] for c in tier]
    six = ["conf/quant/mpq_one_stage_2p5bit.yaml", "conf/quant/mpq_one_stage_2p5bit_out8.yaml",
           "conf/quant/tuning/mpq_one_stage_2p5bit_teacherkl_lr8.yaml", "conf/quant/mpq_kl_2p5bit.yaml",
           "conf/quant/mpq_hessian_2p5bit.yaml", "conf/quant/mpq_supernet_2p5bit.yaml"]
    # seed 1: the methods' confs were decoded on dev and test in the tuning; the variant kept on dev alone, so
    # its test decode is a step of its own
    assert confs == six[1:3] + six + six, confs
    assert "--seeds 1 --quant_confs conf/quant/tuning/mpq_one_stage_2p5bit_teacherkl_lr8.yaml --quant_test_sets test" \
        in tier[1]
    assert "kept: conf/quant/tuning/mpq_one_stage_2p5bit_teacherkl_lr8.yaml" in \
        (tmp_path / "exp" / "queue" / "queue.log").read_text()
    assert queue() == []                                # all done: nothing runs again
