"""Mixed precision learnt in training (one-stage MPQ and the differentiable search) on a real tiny
ESPnet Conformer: the allocation is fixed within the budget, the model packs and decodes from its
packed file, the same seed gives the same allocation, and bad configs fail before training."""
import argparse

import pytest
import torch

from mpq_plugins.espnet_task import MixedPrecisionASR, QuantASRTask
from mpq_plugins.quant import QuantConfigError, quantized_modules
from mpq_plugins.quant.export import export_packed, load_packed
from mpq_plugins.quant.mpq import (MixedWeightQuantizer, finalize, fixed_bytes, is_searching, mixed_quantizers,
                                   numels, with_fixed_bits)
from mpq_plugins.quant.search import average_bits
from tests.fixtures import tiny_asr_conf, tiny_asr_model

MPQ = {"method": "one_stage", "candidates": [2, 4, 8], "budget": {"avg_bits": 3.0}, "search_steps": 3,
       "tau": [1.0, 0.2], "kl_weight": 1.0}


def build(quant, init_param=None, seed=0):
    conf = tiny_asr_conf()
    conf.update(quantization=quant, init_param=[init_param] if init_param else [])
    torch.manual_seed(seed)
    return QuantASRTask.build_model(argparse.Namespace(**conf)), conf


def batch():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6400]),
            torch.randint(2, 10, (2, 5), generator=g), torch.tensor([5, 4]))


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32") / "fp32.pth"
    torch.save(tiny_asr_model().state_dict(), path)
    return str(path)


def train(fp32_file, mpq=MPQ, steps=5, seed=0):
    model, conf = build({"weight_bits": 4, "mixed_precision": mpq}, fp32_file, seed)
    model.load_state_dict(torch.load(fp32_file, weights_only=True), strict=False)   # as --init_param does
    args = argparse.Namespace(**conf)
    args.optim, args.optim_conf = "adam", {"lr": 1e-3}
    (opt,) = QuantASRTask.build_optimizers(args, model)
    model.train()
    torch.manual_seed(seed)
    stats = []
    for _ in range(steps):
        opt.zero_grad()
        loss, st, _ = model(*batch())
        loss.backward()
        opt.step()
        stats.append(st)
    return model, conf, opt, stats


def test_one_stage_fixes_an_allocation_within_budget_and_packs(fp32_file, tmp_path):
    model, conf, opt, stats = train(fp32_file)
    assert isinstance(model, MixedPrecisionASR) and int(model.mpq_steps) == 5
    assert not is_searching(model)
    mq = mixed_quantizers(model)
    assert set(mq) == set(quantized_modules(model))
    bits = {k: q.bits for k, q in mq.items()}
    assert set(bits.values()) <= {2, 4, 8}
    assert average_bits(bits, numels(model, bits)) <= 3.0
    assert all(k in stats[0] for k in ("mpq_kl", "mpq_bits", "mpq_tau")) and stats[0]["mpq_kl"] >= 0
    assert stats[-1]["mpq_tau"] == pytest.approx(0.2)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == [1e-3, 0.05]                                # the logits: their own rate (logit_lr)
    # finalize to plain quantized layers, pack, and decode the same from the packed file
    model.eval()
    with torch.no_grad():
        want = model.encode(*batch()[:2])[0]
    assert finalize(model) == bits
    assert not any(isinstance(m, MixedWeightQuantizer) for m in model.modules())
    conf = dict(conf, quantization=with_fixed_bits(conf["quantization"], bits))
    path = tmp_path / "packed.safetensors"
    report = export_packed(model, conf, path)
    assert report["bits_per_layer"] == bits
    assert report["disk_bytes"] <= fixed_bytes(model) + sum(-(-numels(model, bits)[k] * b // 8) for k, b in bits.items())
    packed, _ = load_packed(path)
    with torch.no_grad():
        assert torch.equal(packed.encode(*batch()[:2])[0], want)


def test_teacher_only_while_searching_when_kl_after_fix_is_off(fp32_file):
    mpq = dict(MPQ, kl_after_fix=False)
    model, _, _, stats = train(fp32_file, mpq, steps=5)
    assert not is_searching(model)
    assert ["mpq_kl" in st for st in stats] == [True, True, True, False, False]    # fixed at step 3
    assert all(st["loss"] >= 0 for st in stats)
    *_, kept = train(fp32_file, steps=5)
    assert all("mpq_kl" in st for st in kept)                                       # the default keeps it


def test_candidates_mixed_in_one_batch_match_them_one_by_one():
    torch.manual_seed(0)
    for shape, per_channel in (((12, 7), True), ((6, 4, 3), False), ((5, 1, 3, 3), True)):
        q = MixedWeightQuantizer(shape, [2, 3, 4, 6, 8], per_channel)
        w = torch.randn(shape, requires_grad=True)
        logits = torch.randn(5, requires_grad=True)
        q.mix(w, logits.softmax(0))                                 # initialises every candidate's step
        with torch.no_grad():
            for c in q.quantizers:
                c.log_step.add_(torch.randn_like(c.log_step) * 0.2)
        params = [w, logits] + [c.log_step for c in q.quantizers]
        probe = torch.randn(shape)
        got = q.mix(w, logits.softmax(0))
        want = sum(g * c(w) for g, c in zip(logits.softmax(0), q.quantizers))
        assert torch.allclose(got, want, atol=1e-6)
        for a, b in zip(torch.autograd.grad((got * probe).sum(), params),
                        torch.autograd.grad((want * probe).sum(), params)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_same_seed_same_allocation(fp32_file):
    a = {k: q.bits for k, q in mixed_quantizers(train(fp32_file, steps=4)[0]).items()}
    b = {k: q.bits for k, q in mixed_quantizers(train(fp32_file, steps=4)[0]).items()}
    assert None not in a.values() and a == b                     # fixed (search_steps 3) and identical


def test_supernet_keeps_searching_and_size_budget(fp32_file):
    mpq = dict(MPQ, method="supernet", budget={"size_mb": 0.2}, search_steps=50, kl_weight=0.0)
    model, *_ = train(fp32_file, mpq, steps=3)
    assert is_searching(model)                      # the supernet's bits are chosen after it, not in it


def test_size_weight_grows_while_above_the_budget_and_is_kept_in_checkpoints(fp32_file):
    mpq = dict(MPQ, method="supernet", search_steps=50, kl_weight=0.0, size_weight_lr=100.0)
    model, conf, _, stats = train(fp32_file, mpq, steps=3)
    sw = [float(st["mpq_size_weight"]) for st in stats]
    bits = [float(st["mpq_bits"]) for st in stats]
    assert sw[0] == pytest.approx(20.0 + 100.0 * (bits[0] - 3.0), rel=1e-5)   # (2+4+8)/3 bits at the start
    assert sw[0] < sw[1] < sw[2]
    fresh, _ = build({"weight_bits": 4, "mixed_precision": mpq}, fp32_file)
    fresh.load_state_dict(model.state_dict())                      # strict: the weight is a checkpointed buffer
    assert float(fresh.mpq_size_weight) == pytest.approx(sw[2])
    plain, _ = build({"weight_bits": 4, "mixed_precision": MPQ}, fp32_file)
    assert "mpq_size_weight" not in plain.state_dict()             # off by default: older checkpoints still load


@pytest.mark.parametrize("mpq,message", [
    (dict(MPQ, candidates=[]), "empty"),
    (dict(MPQ, candidates=[2, 9]), "outside 2..8"),
    (dict(MPQ, budget={"avg_bits": 1.5}), "below what the smallest"),
    (dict(MPQ, budget={"avg_bits": 40}), "above 32 bits"),
    (dict(MPQ, budget={"size_mb": 0.0001}), "below what the smallest candidates allow"),
    (dict(MPQ, budget=None), "budget is missing"),
    (dict(MPQ, method="magic"), "method 'magic'"),
    (dict(MPQ, method="kl"), "chooses the bits before training"),
    (dict(MPQ, temperature=1), "unknown key"),
    (dict(MPQ, size_weight_lr=-1), "size_weight_lr"),
    (dict(MPQ, kl_after_fix="no"), "kl_after_fix"),
])
def test_bad_mixed_precision_configs_fail_before_training(fp32_file, mpq, message):
    with pytest.raises(QuantConfigError, match=message):
        build({"weight_bits": 4, "mixed_precision": mpq}, fp32_file)
