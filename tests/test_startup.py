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
