"""int8 serving on CPU: which layers move to int8 kernels, and that they compute what the
fake-quantized layers compute (up to the kernels' own 8-bit quantization of the inputs)."""
import pytest
import torch
import torch.ao.nn.quantized.dynamic as nnqd

from mpq_plugins.espnet.groups import CONFORMER
from mpq_plugins.quant import quantize_
from mpq_plugins.quant.layers import QConv1d, QConv2d, QLinear
from mpq_plugins.quant.serve import Int8Pointwise, StaticInt8ConvReLU, linear_engine, to_int8_serving
from tests.fixtures import tiny_asr_model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_layers_match_their_fake_quantized_selves():
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("lin", QLinear.from_float(torch.nn.Linear(48, 32), 8))
    net.add_module("pw", QConv1d.from_float(torch.nn.Conv1d(32, 24, 1), 6))
    net.add_module("dw", QConv1d.from_float(torch.nn.Conv1d(24, 24, 3, padding=1, groups=24), 8))
    conv = QConv2d.from_float(torch.nn.Conv2d(16, 20, 3, stride=2, padding=1), 4)
    x = torch.randn(2, 7, 48)
    img = torch.randn(3, 16, 13, 10)
    with torch.no_grad():
        want_lin = net.lin(x)
        want_pw = net.pw(want_lin.transpose(1, 2))
        want_conv = conv(img)
        levels_pw, _ = net.pw.weight_quantizer.int_weight(net.pw.weight)
        levels_conv, _ = conv.weight_quantizer.int_weight(conv.weight)
        swapped = to_int8_serving(net)
        holder = torch.nn.Sequential(conv)
        swapped += to_int8_serving(holder)
        assert swapped == ["lin", "pw", "0"]                       # depthwise conv stays float
        assert isinstance(net.pw, Int8Pointwise) and isinstance(holder[0], nnqd.Conv2d)
        assert torch.equal(net.pw.linear.weight().int_repr(), levels_pw[:, :, 0].to(torch.int8))  # the packed levels
        assert torch.equal(holder[0].weight().int_repr(), levels_conv.to(torch.int8))
        got_conv = holder[0](img)
        assert got_conv.shape == want_conv.shape == (3, 20, 7, 5)
        assert rel_err(net.lin(x), want_lin) < 0.02
        assert rel_err(net.pw(want_lin.transpose(1, 2)), want_pw) < 0.02
        assert rel_err(got_conv, want_conv) < 0.05     # the dynamic conv rounds its output to 8 bits too


def test_the_linear_engine_is_onednn_with_amx_and_torchs_own_elsewhere():
    has_onednn = "onednn" in torch.backends.quantized.supported_engines
    assert linear_engine("auto", {"avx2", "avx512_vnni", "amx_int8"}) == ("onednn" if has_onednn else None)
    assert linear_engine("auto", {"avx2", "avx512_vnni"}) is None
    with pytest.raises(ValueError, match="engine 'mkl' is not one of auto, fbgemm, onednn"):
        to_int8_serving(torch.nn.Sequential(QLinear.from_float(torch.nn.Linear(4, 4), 8)), engine="mkl")


@pytest.mark.parametrize("engine", [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines])
def test_each_engine_serves_the_packed_levels_and_leaves_torchs_engine_alone(engine):
    torch.manual_seed(0)
    net = torch.nn.Sequential(QLinear.from_float(torch.nn.Linear(48, 32), 8),
                              QConv1d.from_float(torch.nn.Conv1d(32, 24, 1), 4))
    x = torch.randn(2, 7, 48)
    before = torch.backends.quantized.engine
    with torch.no_grad():
        want = net[1](net[0](x).transpose(1, 2))
        levels, _ = net[0].weight_quantizer.int_weight(net[0].weight)
        assert to_int8_serving(net, engine=engine) == ["0", "1"]
        assert torch.backends.quantized.engine == before
        assert torch.equal(net[0].weight().int_repr(), levels.to(torch.int8))
        got = net[1](net[0](x).transpose(1, 2))
    assert rel_err(got, want) < 0.03


@pytest.mark.parametrize("calibrated", [False, True])
def test_whole_encoder_served_in_int8_agrees(calibrated):
    torch.manual_seed(0)
    model = tiny_asr_model()
    quantize_(model, {"weight_bits": 8}, CONFORMER)
    model.eval()
    speech, lengths = torch.randn(1, 16000), torch.tensor([16000])
    calib = [(torch.randn(1, 12000), torch.tensor([12000])) for _ in range(2)] if calibrated else None
    with torch.no_grad():
        want = model.encode(speech, lengths)[0]
        names = to_int8_serving(model, calibration=calib and (lambda: [model.encode(*b) for b in calib]))
        got = model.encode(speech, lengths)[0]
    if calibrated:       # the subsampling as one static int8 chain
        assert "encoder.embed.conv" in names and isinstance(model.encoder.embed.conv, StaticInt8ConvReLU)
    else:
        assert any("embed.conv" in n for n in names) or model.encoder.embed.conv[2].weight[0].numel() < 16
    assert sum(isinstance(m, QLinear) for m in model.modules()) == 0      # every quantized Linear is int8 now
    assert rel_err(got, want) < 0.05


class _Subsampling(torch.nn.Module):
    """A Conv2d+ReLU chain behind an `encode`, which the calibration runs."""

    def __init__(self, bits, chans=16):
        super().__init__()
        self.conv = torch.nn.Sequential(
            QConv2d.from_float(torch.nn.Conv2d(1, chans, 3, 2), bits), torch.nn.ReLU(),
            QConv2d.from_float(torch.nn.Conv2d(chans, chans, 3, 2), bits), torch.nn.ReLU())

    def encode(self, x, _lengths=None):
        return self.conv(x)


def test_conv_relu_chain_served_statically_from_calibration():
    torch.manual_seed(0)
    net = _Subsampling(8)
    calib = [(torch.randn(1, 1, 60, 20) * 2, None) for _ in range(3)]
    x = torch.randn(2, 1, 60, 20) * 2                                  # not among the calibration batches
    with torch.no_grad():
        want = net.encode(x)
        levels = [c.weight_quantizer.int_weight(c.weight)[0] for c in net.conv[0::2]]
        swapped = to_int8_serving(net, calibration=lambda: [net.encode(*b) for b in calib])
        got = net.encode(x)
    assert swapped == ["conv"]                                        # the chain, not its convs one by one
    assert isinstance(net.conv, StaticInt8ConvReLU) and len(net.conv.convs) == 2
    for conv, lv in zip(net.conv.convs, levels):
        assert torch.equal(conv.weight().int_repr(), lv.to(torch.int8))   # the packed levels
    assert got.shape == want.shape and (got >= 0).all()
    # 7-bit activations: with 0..255, fbgemm's int16 pair sums saturate on the 1-channel conv
    # with full-range 8-bit weights (measured 25-34% error); here it stays near the rounding error
    assert rel_err(got, want) < 0.03


def test_chain_stays_as_is_without_calibration_or_when_not_quantized():
    torch.manual_seed(0)
    net = _Subsampling(4)
    with torch.no_grad():
        assert to_int8_serving(net) == ["conv.2"]                     # dynamic int8 for the dense conv only
    plain = torch.nn.Module()
    plain.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    plain.encode = lambda x, _l=None: plain.conv(x)
    with torch.no_grad():
        assert to_int8_serving(plain, calibration=lambda: plain.encode(torch.randn(1, 1, 9, 9))) == []
    assert isinstance(plain.conv, torch.nn.Sequential)


@pytest.mark.parametrize("bits", [1, 1.6, 2])
def test_the_grids_below_3_bits_serve_on_the_int8_kernels(bits):
    torch.manual_seed(0)
    lin = QLinear.from_float(torch.nn.Linear(64, 32), bits)
    x = torch.randn(4, 64)
    with torch.no_grad():
        want = lin(x)
        levels, _ = lin.weight_quantizer.int_weight(lin.weight)
        holder = torch.nn.Sequential(lin)
        assert to_int8_serving(holder) == ["0"]
        assert torch.equal(holder[0].weight().int_repr(), levels)      # odd integers at half the step (1, 2 bits)
        assert rel_err(holder[0](x), want) < 0.02
