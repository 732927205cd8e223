"""Training-time quantization on every device this machine has: the CPU always, a CUDA GPU when present.

The CPU runs keep these tests honest where there is no GPU; on a GPU machine the same code must build
no tensor on the wrong device (the mixed-precision expected size, the Hutchinson probes, the packing
of a model that trained on the GPU) and give the CPU's numbers.
"""
import argparse

import pytest
import torch

from mpq_plugins.espnet.groups import CONFORMER
from mpq_plugins.espnet.load import load_asr_model, load_packed, pack_asr_model
from mpq_plugins.espnet.sensitivity import espnet_hessian_sensitivity
from mpq_plugins.espnet.task import QuantASRTask, finalize_run
from mpq_plugins.quant import QuantConfig
from mpq_plugins.quant.config import plan
from mpq_plugins.quant.mixed import expected_avg_bits, is_searching, mixed_quantizers
from tests.fixtures import tiny_asr_model
from tests.test_mpq import MPQ, batch, build, write_run

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32") / "fp32.pth"
    torch.save(tiny_asr_model().state_dict(), path)
    return str(path)


def train_on(device, fp32_file, steps=5):
    model, conf = build({"weight_bits": 4, "mixed_precision": MPQ}, fp32_file)
    model.load_state_dict(torch.load(fp32_file, weights_only=True), strict=False)
    model.to(device).train()
    args = argparse.Namespace(**conf)
    args.optim, args.optim_conf = "adam", {"lr": 1e-3}
    (opt,) = QuantASRTask.build_optimizers(args, model)
    torch.manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        loss, stats, _ = model(*(t.to(device) for t in batch()))
        loss.backward()
        opt.step()
    return model, conf, stats


@pytest.mark.parametrize("device", DEVICES)
def test_one_stage_training_runs_and_fixes_its_bits_on(device, fp32_file):
    model, _, stats = train_on(device, fp32_file)
    assert not is_searching(model) and int(model.mpq_updates) == 5
    assert expected_avg_bits(model).device.type == device
    assert all(q.bits in MPQ["candidates"] for q in mixed_quantizers(model).values())
    assert all(torch.isfinite(v).all() for v in stats.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_trained_on_a_device_is_finalized_packed_and_decoded_on_the_cpu(device, fp32_file, tmp_path):
    model, conf, _ = train_on(device, fp32_file)
    model.eval()
    speech, lengths, *_ = batch()
    with torch.no_grad():
        want = model.encode(speech.to(device), lengths.to(device))[0].cpu()
    finalize_run(QuantASRTask, write_run(model, conf, tmp_path))       # checkpoints saved from the device
    plain, final = load_asr_model(tmp_path / "config.yaml", tmp_path / "valid.acc.ave.pth")
    pack_asr_model(plain, final, tmp_path / "packed.safetensors")
    packed, _ = load_packed(tmp_path / "packed.safetensors")
    with torch.no_grad():
        assert torch.allclose(packed.encode(speech, lengths)[0], want, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_an_all_in_one_update_runs_on(device, tmp_path):
    """Nested systems (unit slices, the subsampling shared with its random state, the GPU's included) on the
    device, learning from the float teacher there."""
    from tests.test_nested import batch as aio_batch, build as aio_build, float_model_of
    torch.save(float_model_of().state_dict(), tmp_path / "fp32.pth")
    model, _ = aio_build(teacher=str(tmp_path / "fp32.pth"))
    model.to(device).train()
    stats = {}
    for _ in range(2):
        loss, stats, _ = model(*(t.to(device) for t in aio_batch()))
        loss.backward()
    assert loss.device.type == device and int(model.aio_forwards) == 2
    assert {"loss_largest", "loss_smallest", "mpq_kl"} <= set(stats)
    assert all(torch.isfinite(v).all() for v in stats.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_sensitivity_on_a_device_matches_the_cpu(device):
    model = tiny_asr_model()
    names = list(plan(model, QuantConfig(modules=[r"encoder\.encoders\.0\.feed_forward\.w_[12]", "ctc"]), CONFORMER))
    cpu = espnet_hessian_sensitivity(model, [batch()], names, [2, 4], n_samples=4)
    on = espnet_hessian_sensitivity(model.to(device), [tuple(t.to(device) for t in batch())], names, [2, 4],
                                    n_samples=4)
    assert [on[n][b] for n in names for b in (2, 4)] == pytest.approx([cpu[n][b] for n in names for b in (2, 4)],
                                                                      rel=1e-3)


def test_no_tensor_is_made_without_the_models_device():
    """With torch's default device set to `meta`, a tensor made without naming a device lands on meta and
    any op mixing it with the CPU model fails: what a CPU-made tensor does to a model on a GPU."""
    from mpq_plugins.quant.mixed import MixedWeightQuantizer, expected_avg_bits, attach_mixed
    from mpq_plugins.quant.numerics import mse_step
    from mpq_plugins.quant.sensitivity import hessian_sensitivity
    from mpq_plugins.quant import quantize_
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4))
    x = torch.randn(8, 6)
    quantize_(model, {"weight_bits": 4, "mixed_precision": {"candidates": [1, 1.6, 2, 4], "budget": {"avg_bits": 3}}})
    probe = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4))
    with torch.device("meta"):
        model.train()
        out = model(x)
        assert out.device.type == "cpu"
        out.sum().backward()
        assert expected_avg_bits(model).device.type == "cpu"
        assert mse_step(x, 2).device.type == "cpu"
        sens = hessian_sensitivity(probe, [lambda: (probe(x) ** 2).mean()], ["0", "1"], [1, 2, 4], n_samples=2)
        assert all(v >= 0 for layer in sens.values() for v in layer.values())
