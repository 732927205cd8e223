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
    assert len(out) == len(set(out)) == 46 and all(os.path.exists(os.path.join(ROOT, p)) for p in out)
    budgets = {}
    for p in out:
        conf = compose(os.path.join(ROOT, p))
        mp = (conf.get("quantization") or {}).get("mixed_precision")
        if mp and "_half" not in p:
            budgets.setdefault(conf["method"], set()).add(mp["budget"]["avg_bits"])
    assert budgets == {m: {3.5, 3, 2.5, 2, 1.75} for m in ("one_stage", "kl", "hessian", "supernet")}
    halves = [compose(os.path.join(ROOT, p)) for p in out if "_half" in p]
    assert len(halves) == 8 and all(h["num_iters_per_epoch"] == 212 for h in halves)


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


def test_the_results_queue_runs_the_sweep_below_two_bits_first_with_one_stage_as_tuned():
    import subprocess
    run = lambda *a: subprocess.run([os.path.join(ROOT, "local", a[0]), *a[1:]], capture_output=True, text=True,  # noqa
                                    check=True).stdout.split()
    queued = run("results_queue.sh", "--list")
    assert len(queued) == len(set(queued)) and set(queued) <= set(run("budget_sweep.sh", "--list"))
    assert queued[:4] == ["conf/quant/" + c + ".yaml" for c in ("fp32_cont", "w2", "w1p6", "w1")]
    budgets = [compose(os.path.join(ROOT, p))["quantization"]["mixed_precision"]["budget"]["avg_bits"]
               for p in queued[4:12]]
    assert budgets == [2] * 4 + [1.75] * 4                       # the open end of the sweep before the rest
    for p in queued:                                             # one-stage always as the tuning kept it
        conf = compose(os.path.join(ROOT, p))
        if conf["method"] == "one_stage":
            assert conf["quantization"]["mixed_precision"]["search_loss"] == "teacher_kl", p
            assert conf["quantization"]["mixed_precision"]["logit_lr"] == 8.0, p
    r = subprocess.run([os.path.join(ROOT, "local", "results_queue.sh"), "--go"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown option --go" in r.stderr
    r = subprocess.run([os.path.join(ROOT, "local", "results_queue.sh"), "--lane", "c"], capture_output=True, text=True)
    assert r.returncode != 0 and "--lane takes a or b, not 'c'" in r.stderr


def test_two_lanes_share_the_queue_each_step_once_and_a_cut_queue_goes_on(tmp_path):
    """local/results_queue.sh itself with its run.sh replaced by a script that records its calls (and fails once
    where told to): the float model's decodes before the lanes, both lanes together run every step once, the int8
    decodes after the default systems; a failed
    step is run again by the next queue, nothing else is."""
    import shutil
    import subprocess
    (tmp_path / "local").mkdir()
    shutil.copy(os.path.join(ROOT, "local", "results_queue.sh"), tmp_path / "local")
    (tmp_path / "run.sh").write_text('#!/bin/bash\nsleep 0.05\n[ -f fail ] && [[ "$*" == *"--seeds 2 --quant_confs conf/quant/w1.yaml"* ]] '
                                     '&& exit 1\necho "$*" >> calls\n')
    os.chmod(tmp_path / "run.sh", 0o755)
    (tmp_path / "fail").touch()
    subprocess.run(["local/results_queue.sh"], cwd=tmp_path, check=True, timeout=300)
    calls = (tmp_path / "calls").read_text().splitlines()
    n = len(subprocess.run(["local/results_queue.sh", "--list"], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.split())
    assert len(calls) == len(set(calls)) == 2 + 3 * 25 + 3 * 6 + 3 * 3 - 1 + 2   # stages 1-5, float, list, default, int8
    assert calls[:2] == ["--stop_stage 5", "--nj 2 --stage 6 --stop_stage 8 --quant_confs "]
    default = [i for i, c in enumerate(calls) if c == "--nj 1 --stage 6"]
    int8 = [i for i, c in enumerate(calls) if "decode_asr_int8" in c]
    assert len(default) == len(int8) == 1 and default[0] < int8[0]
    assert n == 34 and "--seeds 2 --quant_confs conf/quant/w1.yaml" not in " ".join(calls)
    log = (tmp_path / "exp" / "queue" / "queue.log").read_text()
    assert "w1 seed 2: FAILED" in log and ("lane a: done" in log or "lane b: done" in log)
    (tmp_path / "fail").unlink()
    (tmp_path / "calls").unlink()
    subprocess.run(["local/results_queue.sh", "--lane", "b"], cwd=tmp_path, check=True, timeout=120)
    again = (tmp_path / "calls").read_text().splitlines()
    assert len(again) == 1 and "--seeds 2 --quant_confs conf/quant/w1.yaml --quant_test_sets test" in again[0]


def test_the_queue_reports_the_systems_scored_so_far_in_list_order(tmp_path):
    """--report: the float model and every system of the list scored on test under both decodes, each conf's seeds
    together in list order; a system with one decode scored, or none, is left out; nothing before the float model."""
    import shutil
    import subprocess
    (tmp_path / "local").mkdir()
    shutil.copy(os.path.join(ROOT, "local", "results_queue.sh"), tmp_path / "local")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/../args"\n')
    os.chmod(tmp_path / "bin" / "python", 0o755)
    (tmp_path / "path.sh").write_text(f'export PATH="{tmp_path}/bin:$PATH"\n')

    def score(d, decodes=("decode_asr_packed", "decode_acoustic_packed")):
        for dec in decodes:
            f = tmp_path / "exp" / d / dec / "test" / "score_wer" / "result.txt"
            f.parent.mkdir(parents=True)
            f.write_text("Sum/Avg ...\n")

    report = lambda: subprocess.run(["local/results_queue.sh", "--report"], cwd=tmp_path, capture_output=True,  # noqa
                                    text=True, timeout=60)
    r = report()
    assert r.returncode != 0 and "exp/asr_train_asr_conformer is not scored on test" in r.stderr
    f = "asr_train_asr_conformer"
    score(f)
    for d in (f + "_w1_seed2", f + "_fp32_cont", f + "_w1", f + "_mpq_kl_2bit_seed3"):
        score(d)
    score(f + "_w2", decodes=("decode_asr_packed",))                     # the acoustic decode not scored yet
    assert report().returncode == 0
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:4] == ["-m", "mpq_plugins.bin.results", "--baseline", "exp/" + f]
    assert args[args.index("--systems") + 1].split() == [
        "exp/" + f + s for s in ("_fp32_cont", "_w1", "_w1_seed2", "_mpq_kl_2bit_seed3")]
    assert args[args.index("--out") + 1] == "RESULTS.md" and not (tmp_path / "exp" / "queue").exists()
