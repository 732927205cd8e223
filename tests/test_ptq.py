"""Post-training quantization (mpq_plugins.bin.ptq, quant confs with method: ptq) on a real tiny
ESPnet model: the checkpoint it writes rebuilds strictly from the config beside it, holds the float
weights and the MSE-optimal steps, and bad input is one clear error with nothing written."""
import os
import subprocess

import pytest
import torch
import yaml

from mpq_plugins.bin import ptq
from mpq_plugins.espnet.load import load_asr_model
from mpq_plugins.espnet.system import describe
from mpq_plugins.quant import quantized_modules
from mpq_plugins.quant.numerics import fake_quant, mse_step
from tests.fixtures import tiny_asr_conf, tiny_asr_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def float_exp(tmp_path_factory):
    d = tmp_path_factory.mktemp("float")
    model = tiny_asr_model()
    torch.save(model.state_dict(), d / "model.pth")
    with open(d / "config.yaml", "w") as f:
        yaml.safe_dump(tiny_asr_conf(), f)
    return d, model


def write(path, conf):
    with open(path, "w") as f:
        yaml.safe_dump(conf, f)
    return str(path)


def test_ptq_checkpoint_rebuilds_strictly_and_holds_the_mse_steps(float_exp, tmp_path):
    d, fmodel = float_exp
    qc = write(tmp_path / "w4_ptq.yaml", {"method": "ptq", "quantization": {"weight_bits": 4}})
    out = tmp_path / "sys" / "valid.acc.ave.pth"
    ptq.main(["--asr_train_config", str(d / "config.yaml"), "--asr_model_file", str(d / "model.pth"),
              "--quant_conf", qc, "--out", str(out)])
    model, conf = load_asr_model(str(out.parent / "config.yaml"), str(out))   # strict: every tensor there
    assert conf["quantization"] == {"weight_bits": 4}
    qmods = quantized_modules(model)
    assert qmods
    fstate = fmodel.state_dict()
    for name, mod in qmods.items():
        w = fstate[f"{name}.weight"]
        assert torch.equal(mod.weight, w)
        assert torch.allclose(mod.weight_quantizer.step, mse_step(w, 4, True), rtol=1e-6)
        assert torch.allclose(mod.qweight(), fake_quant(w, mse_step(w, 4, True), 4), atol=1e-6)
        assert len((mod.qweight() / mod.weight_quantizer.step).round().unique()) <= 15


def test_ptq_bad_input_is_one_error_and_writes_nothing(float_exp, tmp_path):
    d, _ = float_exp
    out = tmp_path / "sys" / "valid.acc.ave.pth"
    other = tiny_asr_model()
    state = other.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "short.pth")
    qc = write(tmp_path / "w8_ptq.yaml", {"method": "ptq", "quantization": {"weight_bits": 8}})
    cases = [
        (str(tmp_path / "short.pth"), qc, "does not fit"),
        (str(d / "model.pth"), write(tmp_path / "w9.yaml", {"method": "ptq", "quantization": {"weight_bits": 9}}),
         "weight_bits"),
        (str(d / "model.pth"), write(tmp_path / "mixed.yaml", {"method": "ptq", "quantization": {
            "mixed_precision": {"budget": {"avg_bits": 3}}}}), "fixed bit-widths"),
        (str(d / "model.pth"), write(tmp_path / "qat.yaml", {"method": "qat", "quantization": {"weight_bits": 8}}),
         "not ptq"),
        (str(d / "model.pth"), write(tmp_path / "a8.yaml", {"method": "ptq", "quantization": {"act_bits": 8}}),
         "calibration"),
    ]
    for model_file, conf, message in cases:
        with pytest.raises(SystemExit) as e:
            ptq.main(["--asr_train_config", str(d / "config.yaml"), "--asr_model_file", model_file,
                      "--quant_conf", conf, "--out", str(out)])
        assert message in str(e.value)
        assert not out.parent.exists() or not os.listdir(out.parent)


def conf_method(conf):
    """What run.sh reads of a quant conf (its conf_method function)."""
    return subprocess.run(["bash", "-c", f"sed -n 's/^method: *\\([a-z_]*\\).*/\\1/p' {conf}"],
                          capture_output=True, text=True).stdout.strip()


def test_run_sh_reads_the_method_from_the_conf_itself():
    assert conf_method(os.path.join(ROOT, "conf", "quant", "w8_ptq.yaml")) == "ptq"
    assert conf_method(os.path.join(ROOT, "conf", "quant", "w8.yaml")) == "qat"
    assert conf_method(os.path.join(ROOT, "conf", "quant", "mpq_one_stage_2p5bit.yaml")) == "one_stage"
    with open(os.path.join(ROOT, "run.sh")) as f:
        assert "conf_method() { sed -n 's/^method: *\\([a-z_]*\\).*/\\1/p' \"$1\"; }" in f.read()
    assert describe("ptq", {"weight_bits": 8}) == "uniform PTQ, weights"
    assert describe("qat", {"weight_bits": 8}) == "uniform QAT, weights"
    assert describe("qat", {"weight_bits": 8, "act_bits": 8, "bits": {"x": 4}}) == "mixed QAT, weights and activations"
