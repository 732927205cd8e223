"""Integer serving on CPU: quantized layers of at most 8 bits run on int8 kernels.

`to_int8_serving(model)` replaces, in place,
- every quantized Linear by torch's dynamic int8 Linear (fbgemm on x86: int8 weights, activations
  quantized per tensor on the fly, int32 accumulation), with the layer's own integer levels and
  per-channel steps: the weights are exactly the packed ones;
- every quantized pointwise Conv1d (kernel 1, the Conformer convolution module's pointwise
  convolutions) by the same int8 Linear over channels (1.17x float here). torch's dynamic int8
  Conv1d is faster (1.6x) but rounds its output to 8 bits as well: 3% error where the Linear has 1%;
- every quantized dense Conv2d with at least MIN_DENSE values per output (the second conv of the
  subsampling, 144 x 3 x 3) by torch's dynamic int8 convolution (fbgemm) with the same integer levels
  and steps: 1.8x faster than float's mkldnn conv on one thread here, where im2col with the int8
  Linear (tried before) was slower than float. Its output is rounded to 8 bits too; the ReLU after it
  and the subsampling's Linear follow.
Other layers (depthwise convolutions: fbgemm's dynamic depthwise conv is 14x slower than float; the
1-channel first subsampling conv; embeddings) keep their dequantized float weights.

Sub-8-bit levels fit in int8, so 2- to 8-bit systems all serve this way. Activations are
quantized by the kernel at run time, so hypotheses may differ slightly from the fake-quantized
model's; `mpq_plugins.bin.benchmark_quant` reports both. Never `torch._int_mm` on CPU: measured
40-110x slower than float here.
"""
import torch
import torch.ao.nn.quantized.dynamic as nnqd

from mpq_plugins.quant.layers import QConv1d, QConv2d, QLinear

MIN_DENSE = 16     # values per output channel below which a conv stays float (the 1 x 3 x 3 first conv)


def _per_channel(weight_levels, step):
    out = weight_levels.shape[0]
    scales = step.reshape(-1).double().expand(out).contiguous()
    return torch._make_per_channel_quantized_tensor(weight_levels.to(torch.int8), scales,
                                                   torch.zeros(out, dtype=torch.long), 0)


def _int8_linear(weight_levels, step, bias):
    out_f, in_f = weight_levels.shape
    lin = nnqd.Linear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
    lin.set_weight_bias(_per_channel(weight_levels, step), None if bias is None else bias.detach().float())
    return lin


class Int8Pointwise(torch.nn.Module):
    """A kernel-1 Conv1d (B, C, T) served as an int8 Linear over channels."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x.transpose(1, 2)).transpose(1, 2)


def _int8_conv2d(conv, weight_levels, step):
    new = nnqd.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, groups=1, bias=conv.bias is not None)
    new.set_weight_bias(_per_channel(weight_levels, step), None if conv.bias is None else conv.bias.detach().float())
    return new


def _int8_kind(mod):
    """Which int8 kernel serves a quantized layer: "linear", "pointwise", "conv2d", or None (stays float)."""
    if isinstance(mod, QLinear):
        return "linear"
    if (isinstance(mod, QConv1d) and mod.kernel_size == (1,) and mod.groups == 1
            and mod.padding in ((0,), "valid") and mod.stride == (1,) and mod.dilation == (1,)):
        return "pointwise"
    if (isinstance(mod, QConv2d) and mod.groups == 1 and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str) and mod.weight[0].numel() >= MIN_DENSE):
        return "conv2d"
    return None


def to_int8_serving(model):
    """Swap quantized Linear, pointwise Conv1d and dense Conv2d layers for int8 kernels; returns their names."""
    swapped = []
    for name, mod in list(model.named_modules()):
        kind = _int8_kind(mod)
        if kind is None:
            continue
        levels, step = mod.weight_quantizer.int_weight(mod.weight)
        if kind == "linear":
            new = _int8_linear(levels, step, mod.bias)
        elif kind == "pointwise":
            new = Int8Pointwise(_int8_linear(levels[:, :, 0], step, mod.bias))
        else:
            new = _int8_conv2d(mod, levels, step)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        swapped.append(name)
    return swapped


def espnet_dynamic_int8(model):
    """ESPnet's own --quantize_asr_model: torch dynamic int8 quantization of every float Linear."""
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
