"""Quantizer numerics against hand-computed values: levels, rounding, clipping, STE and LSQ gradients."""
import pytest
import torch

from mpq_plugins.quant.numerics import (ActQuantizer, WeightQuantizer, check_bits, fake_quant, mse_step, qmax,
                                        to_int)


def test_levels():
    assert [qmax(b) for b in range(3, 9)] == [3, 7, 15, 31, 63, 127]
    assert [qmax(b) for b in (1, 1.6, 2)] == [0.5, 1, 1.5]


@pytest.mark.parametrize("bad", [9, 0, 1.5, 32, 4.0, "4", None, True])
def test_a_bit_width_that_does_not_exist_is_rejected_with_the_list(bad):
    with pytest.raises(ValueError, match=r"is not one of 1, 1.6 \(ternary\), 2, 3"):
        check_bits(bad)


def test_the_bit_widths_below_3_by_hand():
    x = torch.tensor([-2.0, -0.6, -0.4, -0.1, 0.0, 0.1, 0.4, 0.6, 2.0])
    s = torch.tensor(0.5)
    # binary: +-s/2 by sign (0 goes to +: round(-0.5) is -0, +0.5)
    assert fake_quant(x, s, 1).tolist() == [-0.25] * 4 + [0.25] * 5
    assert to_int(x, s, 1).tolist() == [-1] * 4 + [1] * 5
    # ternary: -s, 0, s with zero for |x| < s/2
    assert fake_quant(x, s, 1.6).tolist() == [-0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    assert to_int(x, s, 1.6).tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1]
    # four levels: +-s/2, +-3s/2 (thresholds 0 and +-s); no zero; as integers the odd numbers at half the step
    assert fake_quant(x, s, 2).tolist() == [-0.75, -0.75, -0.25, -0.25, 0.25, 0.25, 0.25, 0.75, 0.75]
    assert to_int(x, s, 2).tolist() == [-3, -3, -1, -1, 1, 1, 1, 3, 3]
    assert sorted(set(fake_quant(torch.linspace(-3, 3, 101), s, 2).tolist())) == [-0.75, -0.25, 0.25, 0.75]


@pytest.mark.parametrize("bits", [1, 1.6, 2, 3, 4])
def test_int_weight_times_its_unit_is_the_forward(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    wq = WeightQuantizer(w.shape, bits)
    levels, unit = wq.int_weight(w)
    assert torch.equal(levels.float() * unit, wq(w).detach())


def test_mse_step_of_binary_is_near_the_mean_magnitude():
    torch.manual_seed(0)
    w = torch.randn(4, 4000)
    s = mse_step(w, 1)
    # the best binary level of a Gaussian is E|w| (0.80 sigma); the grid has 40 points
    assert torch.allclose(s.reshape(-1) / 2, w.abs().mean(1), rtol=0.08)


def test_rounding_and_clipping_by_hand():
    x = torch.tensor([-1.0, -0.26, -0.24, 0.0, 0.1, 0.25, 0.74, 0.76, 3.0])
    # 3 bits: levels -3..3, step 0.5 -> values -1.5..1.5; 0.25 / 0.5 = 0.5 rounds half to even (0)
    y = fake_quant(x, torch.tensor(0.5), 3)
    assert y.tolist() == [-1.0, -0.5, -0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.5]
    assert to_int(x, torch.tensor(0.5), 3).tolist() == [-2, -1, 0, 0, 0, 0, 1, 2, 3]
    # 1.6 bits: ternary
    assert fake_quant(x, torch.tensor(0.5), 1.6).tolist() == [-0.5, -0.5, -0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5]


def test_ste_and_lsq_gradients_by_hand():
    x = torch.tensor([0.3, -0.7, 2.0, -5.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    fake_quant(x, s, 3).sum().backward()
    # STE: gradient 1 inside the clipping range (|x/s| <= 3), 0 outside
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    # LSQ: d/ds = round(x/s) - x/s inside, +-Q outside
    want = (1 - 0.6) + (-1 - (-1.4)) + 3 + (-3)
    assert s.grad.item() == pytest.approx(want)


def test_weight_quantizer_gradient_scale():
    w = torch.tensor([[0.3, -0.7, 0.1, 0.2], [1.0, 0.5, -0.25, 0.0]])
    wq = WeightQuantizer(w.shape, 3)
    wq.log_step.data = torch.tensor([[0.5], [0.25]]).log()
    wq(w).sum().backward()
    g = 1 / (4 * 3) ** 0.5       # 4 values share each step, Q = 3
    row0 = (1 - 0.6) + (-1 + 1.4) + (0 - 0.2) + (0 - 0.4)
    row1 = 3 + (2 - 2) + (-1 + 1) + 0          # 1.0 / 0.25 = 4 > 3: clipped, contributes Q
    # the parameter is log(step): d/dlog_step = step * dL/dstep, times the LSQ scale
    assert wq.log_step.grad[:, 0].tolist() == pytest.approx([0.5 * row0 * g, 0.25 * row1 * g])


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_adam_moves_a_step_by_a_fraction_at_any_bit_width(bits):
    """Adam moves each parameter by about lr per update. A raw 8-bit step (~1e-3) would cross zero
    within a few updates at lr 1e-3 (this killed channels in 8-bit QAT); a log-step changes by a
    factor near exp(lr) (Adam's bias-corrected update can exceed lr a little)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 64) * 0.05)
    wq = WeightQuantizer(w.shape, bits)
    wq(w)
    before = wq.step.detach().clone()
    opt = torch.optim.Adam([w, *wq.parameters()], lr=1e-3)
    for _ in range(50):
        opt.zero_grad()
        (wq(w) - 1.0).pow(2).sum().backward()   # pulls every step one way
        opt.step()
    ratio = wq.step.detach() / before
    assert (ratio > 0).all()
    bound = torch.tensor(50 * 2e-3).exp()     # 50 updates of at most 2 lr each, in the log domain
    assert ratio.min() > 1 / bound and ratio.max() < bound


def test_mse_step_clips_outliers_and_is_per_channel():
    torch.manual_seed(0)
    w = torch.randn(3, 1000)
    w[0, 0] = 40.0                              # one outlier: the MSE step clips it
    s = mse_step(w, 4)
    assert s.shape == (3, 1)
    assert s[0, 0] < 40.0 / 7 * 0.9 and s[1, 0] < w[1].abs().max() / 7 * 0.9
    for r in range(3):                          # no grid ratio is better than the chosen one
        err = ((fake_quant(w[r], s[r], 4) - w[r]) ** 2).sum()
        assert err <= ((fake_quant(w[r], w[r].abs().max() / 7, 4) - w[r]) ** 2).sum() + 1e-6
    assert mse_step(w, 4, per_channel=False).shape == (1, 1)


def test_step_is_initialised_lazily_from_the_weight_it_sees():
    wq = WeightQuantizer((2, 3), 8)
    assert not wq.initialised() and torch.isnan(wq.log_step).all()
    w = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, -0.3]])
    out = wq(w)
    assert wq.initialised()
    assert torch.allclose(out, w, atol=2.0 / 127)
    q, step = wq.int_weight(w)
    assert q.dtype == torch.int8 and torch.equal(q.float() * wq.effective_step().detach(), wq(w).detach())


@pytest.mark.parametrize("mode", ["lsq", "minmax"])
def test_activation_quantizer(mode):
    aq = ActQuantizer(8, mode)
    x = torch.linspace(-2, 2, 101)
    y = aq(x)
    assert aq.step.item() > 0
    assert (y - x).abs().max() <= (aq.step.item() / 2 if mode == "minmax" else 2.0)
    assert len(torch.unique(y)) <= 255
    with pytest.raises(ValueError, match="mode"):
        ActQuantizer(8, "ema")


def test_inference_reuses_the_quantized_weight_until_weight_or_step_change():
    w = torch.nn.Parameter(torch.randn(4, 6))
    wq = WeightQuantizer(w.shape, 4).eval()
    with torch.no_grad():
        a = wq(w)
        assert wq(w) is a                                   # cached
        w.mul_(2)
        b = wq(w)
        assert b is not a and torch.equal(b, fake_quant(w, wq.effective_step(), 4))
        wq.log_step.add_(0.1)
        c = wq(w)
        assert c is not b and torch.equal(c, fake_quant(w, wq.effective_step(), 4))
    wq.train()
    assert wq(w).requires_grad                              # training never uses the cache
