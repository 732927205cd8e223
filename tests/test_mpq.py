"""Mixed precision learnt in training (one-stage MPQ and the differentiable search) on a real tiny
ESPnet Conformer: schedules in optimizer updates, the allocation fixed within the budget, a finished
run finalized into plain quantized checkpoints that pack and decode like the trained model, the same
seed gives the same allocation, and bad configs fail before training."""
import argparse
import json
import os

import pytest
import torch
import yaml

from mpq_plugins.espnet.load import load_asr_model, load_packed, pack_asr_model
from mpq_plugins.espnet.model import MixedPrecisionESPnetModel
from mpq_plugins.espnet.task import QuantASRTask, finalize_run
from mpq_plugins.quant import QuantConfigError, quantized_modules
from mpq_plugins.quant.allocation import average_bits
from mpq_plugins.quant.mixed import MixedWeightQuantizer, is_searching, mixed_quantizers, numels
from mpq_plugins.quant.packing import fixed_bytes
from tests.fixtures import tiny_asr_conf, tiny_asr_model

# the tiny model stores 11.4 bits a parameter with 2-bit weights and 15.8 with 8-bit ones (its header, biases
# and norms weigh a lot): 12 stored bits is about 3.7 bits a weight
MPQ = {"candidates": [2, 4, 8], "budget": {"avg_bits": 12.0}, "search_steps": 3, "tau": [1.0, 0.2]}


def build(quant, teacher=None, seed=0, kl_weight=None):
    conf = tiny_asr_conf()
    kl_weight = (1.0 if teacher else 0.0) if kl_weight is None else kl_weight
    mixed = "mixed_precision" in quant
    conf.update(quantization=quant, teacher_model=teacher, teacher_kl_weight=kl_weight,
                model="mpq_espnet" if mixed or kl_weight > 0 else "espnet")
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


def train(fp32_file, mpq=MPQ, steps=5, seed=0, accum_grad=1, bits=None):
    model, conf = build({"weight_bits": 4, "bits": bits or {}, "mixed_precision": mpq}, fp32_file, seed)
    model.load_state_dict(torch.load(fp32_file, weights_only=True), strict=False)   # as --init_param does
    args = argparse.Namespace(**conf)
    args.optim, args.optim_conf = "adam", {"lr": 1e-3}
    (opt,) = QuantASRTask.build_optimizers(args, model)
    model.train()
    torch.manual_seed(seed)
    stats = []
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accum_grad):       # as ESPnet's trainer accumulates: one update every accum_grad batches
            loss, st, _ = model(*batch())
            loss.backward()
            stats.append(st)
        opt.step()
    return model, conf, opt, stats


def test_one_stage_fixes_an_allocation_within_budget(fp32_file):
    model, conf, opt, stats = train(fp32_file)
    assert isinstance(model, MixedPrecisionESPnetModel) and int(model.mpq_updates) == 5
    assert not is_searching(model)
    mq = mixed_quantizers(model)
    assert set(mq) == set(quantized_modules(model))
    bits = {k: q.bits for k, q in mq.items()}
    assert set(bits.values()) <= {2, 4, 8}
    assert average_bits(bits, numels(model, bits)) <= model.budget_bits
    assert all(k in stats[0] for k in ("mpq_kl", "mpq_bits", "mpq_tau")) and stats[0]["mpq_kl"] >= 0
    assert stats[-1]["mpq_tau"] == pytest.approx(0.2)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == [1e-3, 0.05]                                # the logits: their own rate (logit_lr)
    assert "teacher" not in "".join(model.state_dict())      # the teacher is not part of the model


def test_schedules_count_optimizer_updates_not_batches(fp32_file):
    model, _, _, stats = train(fp32_file, steps=2, accum_grad=2)
    assert int(model.mpq_updates) == 2 and is_searching(model)        # 4 batches, 2 updates: not fixed yet
    assert [float(st["mpq_tau"]) for st in stats[::2]] == pytest.approx([1.0, 0.2 ** (1 / 3)])
    model, *_ = train(fp32_file, steps=3, accum_grad=2)
    assert not is_searching(model)                                      # fixed after the 3rd update


def test_a_resumed_run_goes_on_with_its_schedules(fp32_file):
    model, *_ = train(fp32_file, dict(MPQ, search_steps=50), steps=2)
    resumed, _ = build({"weight_bits": 4, "mixed_precision": dict(MPQ, search_steps=50)}, fp32_file)
    resumed.load_state_dict(model.state_dict())                       # as ESPnet's --resume does
    resumed.train()
    _, stats, _ = resumed(*batch())
    assert int(resumed.mpq_updates) == 2 and float(stats["mpq_tau"]) == pytest.approx(0.2 ** (2 / 50))


def write_run(model, conf, d):
    """A finished run's output dir as ESPnet's trainer leaves it (1 epoch, keep_nbest_models 1)."""
    torch.save(model.state_dict(), d / "1epoch.pth")
    for link, target in (("latest.pth", "1epoch.pth"), ("valid.acc.best.pth", "1epoch.pth"),
                         ("valid.acc.ave_1best.pth", "1epoch.pth"), ("valid.acc.ave.pth", "valid.acc.ave_1best.pth")):
        os.symlink(target, d / link)
    with open(d / "config.yaml", "w") as f:
        yaml.safe_dump(conf, f)
    args = argparse.Namespace(**conf)
    args.output_dir = str(d)
    return args


def test_a_finished_run_is_finalized_into_plain_checkpoints_that_pack_and_decode_the_same(fp32_file, tmp_path):
    model, conf, _, _ = train(fp32_file)
    bits = {k: q.bits for k, q in mixed_quantizers(model).items()}
    model.eval()
    with torch.no_grad():
        want = model.encode(*batch()[:2])[0]
    args = write_run(model, conf, tmp_path)
    epoch = (tmp_path / "1epoch.pth").read_bytes()
    finalize_run(QuantASRTask, args)
    assert (tmp_path / "1epoch.pth").read_bytes() == epoch                     # resumption's files as trained
    assert os.path.islink(tmp_path / "latest.pth") and os.path.islink(tmp_path / "valid.acc.ave.pth")
    assert not os.path.islink(tmp_path / "valid.acc.ave_1best.pth")            # a finalized file of its own
    final = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert final["model"] == "espnet" and "mixed_precision" not in final["quantization"]
    record = json.loads((tmp_path / "mixed_precision.json").read_text())
    assert record["bits"] == bits and record["updates"] == 5
    plain, _ = load_asr_model(tmp_path / "config.yaml", tmp_path / "valid.acc.ave.pth")   # strict
    assert not any(isinstance(m, MixedWeightQuantizer) for m in plain.modules())
    assert not any(k.startswith("mpq_") for k in plain.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.encode(*batch()[:2])[0], want)
    report = pack_asr_model(plain, final, tmp_path / "packed.safetensors")
    assert report["bits_per_layer"] == bits
    assert report["avg_bits_per_param"] <= 12.0                               # the budget: the whole file
    assert report["disk_bytes"] <= fixed_bytes(plain) + sum(-(-numels(plain, bits)[k] * b // 8) for k, b in bits.items())
    packed, _ = load_packed(tmp_path / "packed.safetensors")
    with torch.no_grad():
        assert torch.equal(packed.encode(*batch()[:2])[0], want)
    finalize_run(QuantASRTask, args)                                            # a rerun: nothing left to do
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == final


def test_a_run_that_ends_before_the_fix_is_one_clear_error(fp32_file, tmp_path):
    model, conf, _, _ = train(fp32_file, dict(MPQ, search_steps=50), steps=2)
    with pytest.raises(QuantConfigError, match="ended after 2 optimizer updates, before mixed_precision search_steps 50"):
        finalize_run(QuantASRTask, write_run(model, conf, tmp_path))


def test_a_layer_with_a_bits_entry_keeps_its_bits_and_pays_them_out_of_the_budget(fp32_file, tmp_path):
    pin = {r"ctc\.ctc_lo": 8}
    model, conf, _, _ = train(fp32_file, bits=pin)
    mq = mixed_quantizers(model)
    assert "ctc.ctc_lo" not in mq and set(mq) == set(quantized_modules(model)) - {"ctc.ctc_lo"}
    assert not isinstance(model.ctc.ctc_lo.weight_quantizer, MixedWeightQuantizer)
    assert model.ctc.ctc_lo.weight_quantizer.bits == 8
    n = model.ctc.ctc_lo.weight.numel()
    assert fixed_bytes(model, mq) == fixed_bytes(model) + n           # its 8-bit weights, one byte each
    free, _, _, _ = train(fp32_file)
    assert model.budget_bits < free.budget_bits                        # the rest shares less
    bits = {k: q.bits for k, q in mq.items()}
    finalize_run(QuantASRTask, write_run(model, conf, tmp_path))
    final = yaml.safe_load((tmp_path / "config.yaml").read_text())
    plain, _ = load_asr_model(tmp_path / "config.yaml", tmp_path / "valid.acc.ave.pth")
    report = pack_asr_model(plain, final, tmp_path / "packed.safetensors")
    assert report["bits_per_layer"] == {**bits, "ctc.ctc_lo": 8}
    assert report["avg_bits_per_param"] <= 12.0                       # the whole file within the budget
    with pytest.raises(QuantConfigError, match="nothing to search"):
        build({"weight_bits": 4, "bits": {".*": 8}, "mixed_precision": MPQ}, fp32_file)


def test_teacher_only_while_searching_when_kl_after_fix_is_off(fp32_file):
    mpq = dict(MPQ, kl_after_fix=False)
    model, _, _, stats = train(fp32_file, mpq, steps=5)
    assert not is_searching(model)
    assert ["mpq_kl" in st for st in stats] == [True, True, True, False, False]    # fixed at step 3
    assert all(st["loss"] >= 0 for st in stats)
    *_, kept = train(fp32_file, steps=5)
    assert all("mpq_kl" in st for st in kept)                                       # the default keeps it


def test_a_search_on_the_teachers_kl_alone_leaves_espnets_loss_out_until_the_fix(fp32_file):
    from mpq_plugins.quant.mixed import penalty
    model, _, _, stats = train(fp32_file, dict(MPQ, search_loss="teacher_kl"), steps=5)
    searched = stats[:3]                                                           # fixed at step 3
    for st in searched:
        pen = float(penalty(st["mpq_bits"], model.budget_bits, MPQ.get("size_weight", 20.0)))
        assert float(st["loss"]) == pytest.approx(float(st["mpq_kl"]) + pen, rel=1e-5, abs=1e-6)
        assert float(st["loss_att"]) > 1.0                                         # computed, but not learnt from
    for st in stats[3:]:                                                           # then ESPnet's loss as usual
        assert float(st["loss"]) > float(st["mpq_kl"]) + 1.0
    *_, asr = train(fp32_file, steps=2)
    assert float(asr[0]["loss"]) > float(asr[0]["mpq_kl"]) + 1.0                  # the default learns from both
    with pytest.raises(QuantConfigError, match="search_loss teacher_kl needs the teacher"):
        build({"weight_bits": 4, "mixed_precision": dict(MPQ, search_loss="teacher_kl")})


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


def test_size_budget_searches(fp32_file):
    mpq = dict(MPQ, budget={"size_mb": 0.13}, search_steps=50)
    model, *_ = train(fp32_file, mpq, steps=3)
    assert is_searching(model) and 2 < model.budget_bits < 8
    ratio, _ = build({"weight_bits": 4, "mixed_precision": dict(MPQ, budget={"ratio": 32 / 12.0})}, fp32_file)
    bits12, _ = build({"weight_bits": 4, "mixed_precision": MPQ}, fp32_file)
    assert ratio.budget_bits == pytest.approx(bits12.budget_bits)              # ratio 32/12 is avg_bits 12


def test_size_weight_grows_while_above_the_budget_and_is_kept_in_checkpoints(fp32_file):
    mpq = dict(MPQ, search_steps=50, size_weight_lr=100.0)
    model, conf, _, stats = train(fp32_file, mpq, steps=3)
    sw = [float(st["mpq_size_weight"]) for st in stats]
    bits = [float(st["mpq_bits"]) for st in stats]
    assert sw[0] == 20.0                                                       # raised after each update:
    assert sw[1] == pytest.approx(20.0 + 100.0 * (bits[0] - model.budget_bits), rel=1e-5)   # (2+4+8)/3 at the start
    assert sw[0] < sw[1] < sw[2] < float(model.mpq_size_weight)
    fresh, _ = build({"weight_bits": 4, "mixed_precision": mpq}, fp32_file)
    fresh.load_state_dict(model.state_dict())                      # strict: the weight is a checkpointed buffer
    assert float(fresh.mpq_size_weight) == float(model.mpq_size_weight)
    plain, _ = build({"weight_bits": 4, "mixed_precision": MPQ}, fp32_file)
    assert "mpq_size_weight" not in plain.state_dict()             # off by default: older checkpoints still load


@pytest.mark.parametrize("mpq,message", [
    (dict(MPQ, candidates=[]), "empty"),
    (dict(MPQ, candidates=[2, 9]), "9 is not one of 1, 1.6"),
    (dict(MPQ, budget={"avg_bits": 1.5}), "below what the smallest"),
    (dict(MPQ, budget={"avg_bits": 10.5}), "2 bits everywhere stores 11.4"),
    (dict(MPQ, budget={"ratio": 0.5}), "ratio 0.5 is below 1"),
    (dict(MPQ, kl_weight=1.0), "teacher_kl_weight"),
    (dict(MPQ, logit_optim="rmsprop"), "logit_optim"),
    (dict(MPQ, search_fraction=1.5), "search_fraction"),
    (dict(MPQ, hard=1), "hard must be true or false"),
    (dict(MPQ, budget={"avg_bits": 40}), "above 32 bits"),
    (dict(MPQ, budget={"size_mb": 0.0001}), "below what the smallest candidates allow"),
    (dict(MPQ, budget=None), "budget is missing"),
    (dict(MPQ, method="kl"), "unknown key"),
    (dict(MPQ, temperature=1), "unknown key"),
    (dict(MPQ, size_weight_lr=-1), "size_weight_lr"),
    (dict(MPQ, kl_after_fix="no"), "kl_after_fix"),
    (dict(MPQ, search_loss="ce"), "search_loss 'ce' is not asr or teacher_kl"),
])
def test_bad_mixed_precision_configs_fail_before_training(fp32_file, mpq, message):
    with pytest.raises(QuantConfigError, match=message):
        build({"weight_bits": 4, "mixed_precision": mpq}, fp32_file)


def test_the_mixed_model_and_a_mixed_precision_part_go_together(fp32_file):
    conf = tiny_asr_conf()
    conf.update(quantization={"weight_bits": 4, "mixed_precision": MPQ}, teacher_model=fp32_file)   # model: espnet
    with pytest.raises(QuantConfigError, match="mpq_espnet"):
        QuantASRTask.build_model(argparse.Namespace(**conf))
    conf.update(quantization={"weight_bits": 4}, model="mpq_espnet")
    with pytest.raises(QuantConfigError, match="mpq_espnet"):
        QuantASRTask.build_model(argparse.Namespace(**conf))
    with pytest.raises(QuantConfigError, match="--teacher_model"):
        build({"weight_bits": 4, "mixed_precision": MPQ}, kl_weight=1.0)   # a KL weight and no teacher


def test_sgd_logits_move_by_their_gradient_and_steps_take_their_own_rate(fp32_file):
    mpq = dict(MPQ, search_steps=50, logit_optim="sgd", logit_lr=0.5)
    model, conf = build({"weight_bits": 4, "step_lr": 0.01, "mixed_precision": mpq}, fp32_file)
    model.load_state_dict(torch.load(fp32_file, weights_only=True), strict=False)
    args = argparse.Namespace(**conf)
    args.optim, args.optim_conf = "adam", {"lr": 1e-3}
    (opt,) = QuantASRTask.build_optimizers(args, model)
    logits = {id(q.logits) for q in mixed_quantizers(model).values()}
    assert not any(id(p) in logits for g in opt.param_groups for p in g["params"])   # out of Adam
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-3, 0.01]               # log-steps at step_lr
    model.train()
    loss, _, _ = model(*batch())
    loss.backward()
    before = {k: (q.logits.detach().clone(), q.logits.grad.clone()) for k, q in mixed_quantizers(model).items()}
    opt.step()
    for k, q in mixed_quantizers(model).items():
        start, grad = before[k]
        assert torch.allclose(q.logits.detach(), start - 0.5 * grad, atol=1e-7)     # proportional to the gradient
        assert q.logits.grad is None


def test_hard_gumbel_uses_one_candidate_a_forward():
    torch.manual_seed(0)
    q = MixedWeightQuantizer((8, 5), [1, 2, 4], hard=True).train()
    w = torch.randn(8, 5)
    out = q(w)
    assert any(torch.equal(out, c(w)) for c in q.quantizers)     # exactly one candidate's weight
    out.sum().backward()
    assert q.logits.grad is not None and q.logits.grad.abs().sum() > 0   # the soft gradient reaches the logits


def test_a_teacher_alone_trains_any_method_and_the_run_ends_as_a_plain_model(fp32_file, tmp_path):
    model, conf = build({"weight_bits": 4}, fp32_file)
    assert isinstance(model, MixedPrecisionESPnetModel) and model.mpq_cfg is None
    model.load_state_dict(torch.load(fp32_file, weights_only=True), strict=False)
    model.train()
    _, stats, _ = model(*batch())
    assert stats["mpq_kl"] >= 0 and "mpq_bits" not in stats
    args = write_run(model, conf, tmp_path)
    finalize_run(QuantASRTask, args)
    final = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert final["model"] == "espnet" and final["teacher_kl_weight"] == 0 and final["teacher_model"] is None
    plain, _ = load_asr_model(tmp_path / "config.yaml", tmp_path / "valid.acc.ave.pth")   # strict
    assert type(plain).__name__ == "ESPnetASRModel"
