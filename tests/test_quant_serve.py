"""int8 serving on CPU: which layers move to int8 kernels, and that they compute what the
fake-quantized layers compute (up to the kernels' own 8-bit quantization of the inputs)."""
import torch
import torch.ao.nn.quantized.dynamic as nnqd

from mpq_plugins.quant import quantize_
from mpq_plugins.quant.layers import QConv1d, QConv2d, QLinear
from mpq_plugins.quant.serve import Int8Pointwise, to_int8_serving
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


def test_whole_encoder_served_in_int8_agrees():
    torch.manual_seed(0)
    model = tiny_asr_model()
    quantize_(model, {"weight_bits": 8})
    model.eval()
    speech, lengths = torch.randn(1, 16000), torch.tensor([16000])
    with torch.no_grad():
        want = model.encode(speech, lengths)[0]
        names = to_int8_serving(model)
        got = model.encode(speech, lengths)[0]
    assert any("embed.conv" in n for n in names) or model.encoder.embed.conv[2].weight[0].numel() < 16
    assert sum(isinstance(m, QLinear) for m in model.modules()) == 0      # every quantized Linear is int8 now
    assert rel_err(got, want) < 0.05
