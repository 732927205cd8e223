"""The recipe's Python start-up hook (tools/pystartup, put on PYTHONPATH by path.sh)."""
import os
import subprocess

from tests.conftest import ROOT

PROBE = ("import typeguard\n"
         "def f(x: int) -> int: return x\n"
         "g = typeguard.typechecked(f)\n"
         "print(g is f)\n")


def python_under_path_sh(tmp_path, env_extra=None):
    probe = tmp_path / "probe.py"      # typeguard instruments functions it can read the source of
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPQ_TYPECHECK")}
    env.update(env_extra or {})
    r = subprocess.run(["bash", "-c", f". {ROOT}/path.sh && python {probe}"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_typeguard_instrumentation_is_off_in_the_recipe(tmp_path):
    assert python_under_path_sh(tmp_path) == "True"


def test_mpq_typecheck_turns_the_checks_back_on(tmp_path):
    assert python_under_path_sh(tmp_path, {"MPQ_TYPECHECK": "1"}) == "False"


def test_espnet_optional_dependency_messages_stay_off_the_terminal():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import logging; logging.basicConfig(level=logging.DEBUG, format='log: %(message)s'); "
            "import espnet.nets.pytorch_backend.transformer.attention; print('imported')")
    r = subprocess.run(["bash", "-c", f". {ROOT}/path.sh && python -c \"{code}\""], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "imported"                                   # nothing else on the terminal's stdout
    assert "Flash Attention" not in r.stdout and "log: Failed to import Flash Attention" in r.stderr


def test_transformers_hidden_from_a_run_that_does_not_need_it():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys, mpq_plugins.espnet.task\n"
            "print('transformers' in sys.modules)\n"
            "try:\n    import transformers\nexcept ModuleNotFoundError as e:\n    print(e)\n")
    r = subprocess.run(["bash", "-c", f". {ROOT}/path.sh && MPQ_HIDE_TRANSFORMERS=1 python -c \"{code}\""], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded, message = r.stdout.strip().splitlines()
    assert loaded == "False" and "MPQ_HIDE_TRANSFORMERS=1" in message


def test_what_needs_transformers_is_read_from_the_configs(tmp_path):
    from mpq_plugins.espnet.needs_transformers import reasons
    confs = [f"{ROOT}/{c}" for c in ("conf/train_asr_conformer.yaml", "conf/finetune.yaml", "conf/quant/w4.yaml",
                                     "conf/quant/aio_d432_ff_w42.yaml", "conf/train_lm.yaml",
                                     "egs/ebranchformer/conf/train_asr_ebranchformer.yaml")]
    assert reasons(confs, "--batch_bins 1000 --encoder conformer") == []
    ssl = f"{ROOT}/egs/librispeech_100_ssl/conf/train_asr_wav2vec2_base.yaml"
    assert reasons(confs + [ssl]) == [f"{ssl}: encoder: hf_ssl"]
    assert reasons([], "--frontend huggingface --use_adapter=true --decoder none") == \
        ["options: --frontend huggingface", "options: --use_adapter true"]
    (tmp_path / "bad.yaml").write_text("encoder: [unclosed\n")
    (tmp_path / "zoo.yaml").write_text("encoder: conformer\ntoken_type: hugging_face\nuse_adapter: false\n")
    assert reasons([tmp_path / "bad.yaml", tmp_path / "zoo.yaml", tmp_path / "none.yaml"]) == [
        f"{tmp_path}/bad.yaml: not read (ParserError)", f"{tmp_path}/zoo.yaml: token_type: hugging_face",
        f"{tmp_path}/none.yaml: not read (FileNotFoundError)"]


def test_startup_benchmark_writes_both_imports_and_their_ratio(tmp_path, monkeypatch):
    import json

    from mpq_plugins.bin import benchmark_startup
    monkeypatch.setattr(benchmark_startup, "CODE", "import os, sys; "
                        "sys.exit(os.environ['MPQ_HIDE_TRANSFORMERS'] not in ('0', '1'))")   # a start in milliseconds
    out = tmp_path / "startup.md"
    benchmark_startup.main(["--out", str(out), "--runs", "2"])
    text = out.read_text()
    assert "|transformers hidden|" in text and "|transformers visible|" in text and "median of the pairs" in text
    figures = json.loads((tmp_path / "startup.json").read_text())
    assert [len(figures["runs"][k]) for k in ("hidden", "visible")] == [2, 2]
    assert len(figures["ratio_hidden_over_visible"]) == 2
