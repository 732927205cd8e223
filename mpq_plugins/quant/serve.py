"""Integer serving on CPU: quantized layers of at most 8 bits run on int8 kernels.

`to_int8_serving(model)` replaces, in place,
- every quantized Linear by torch's dynamic int8 Linear (fbgemm on x86: int8 weights, activations
  quantized per tensor on the fly, int32 accumulation), with the layer's own integer levels and
  per-channel steps: the weights are exactly the packed ones;
- every quantized pointwise Conv1d (kernel 1, the Conformer convolution module's pointwise
  convolutions) by the same int8 Linear over channels;
- every quantized dense Conv2d with at least MIN_IM2COL values per output (the second conv of the
  Conformer's subsampling: 144 x 3 x 3) by im2col (`F.unfold`) and the same int8 Linear.
Other layers (depthwise convolutions, the 1-channel first subsampling conv, embeddings) keep their
dequantized float weights.

Sub-8-bit levels fit in int8, so 2- to 8-bit systems all serve this way. Activations are
quantized by the kernel at run time, so hypotheses may differ slightly from the fake-quantized
model's; `mpq_plugins.bin.benchmark_quant` reports both. Never `torch._int_mm` on CPU: measured
40-110x slower than float here.
"""
import torch
import torch.ao.nn.quantized.dynamic as nnqd

import torch.nn.functional as F

from mpq_plugins.quant.layers import QConv1d, QConv2d, QLinear

MIN_IM2COL = 64


def _int8_linear(weight_levels, step, bias):
    out_f, in_f = weight_levels.shape
    lin = nnqd.Linear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
    scales = step.reshape(-1).double().expand(out_f).contiguous() if step.numel() in (1, out_f) else None
    qw = torch._make_per_channel_quantized_tensor(weight_levels.to(torch.int8), scales,
                                                   torch.zeros(out_f, dtype=torch.long), 0)
    lin.set_weight_bias(qw, None if bias is None else bias.detach().float())
    return lin


class Int8Pointwise(torch.nn.Module):
    """A kernel-1 Conv1d (B, C, T) served as an int8 Linear over channels."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x.transpose(1, 2)).transpose(1, 2)


class Int8Conv2d(torch.nn.Module):
    """A dense Conv2d served as im2col and an int8 Linear: (B, C, H, W) -> (B, O, H', W')."""

    def __init__(self, conv, linear):
        super().__init__()
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.linear = linear

    def forward(self, x):
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)   # (B, C*kh*kw, L)
        y = self.linear(cols.transpose(1, 2))                                             # (B, L, O)
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        return y.transpose(1, 2).reshape(b, -1, ho, wo)


def to_int8_serving(model):
    """Swap quantized Linear and pointwise Conv1d layers for int8 kernels; returns their names."""
    swapped = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QLinear):
            q, _ = mod.weight_quantizer.int_weight(mod.weight)
            new = _int8_linear(q, mod.weight_quantizer.effective_step().detach(), mod.bias)
        elif (isinstance(mod, QConv1d) and mod.kernel_size == (1,) and mod.groups == 1
              and mod.padding in ((0,), "valid") and mod.stride == (1,) and mod.dilation == (1,)):
            q, _ = mod.weight_quantizer.int_weight(mod.weight)
            new = Int8Pointwise(_int8_linear(q[:, :, 0], mod.weight_quantizer.effective_step().detach().reshape(-1, 1),
                                             mod.bias))
        elif (isinstance(mod, QConv2d) and mod.groups == 1 and mod.padding_mode == "zeros"
              and not isinstance(mod.padding, str) and mod.weight[0].numel() >= MIN_IM2COL):
            q, _ = mod.weight_quantizer.int_weight(mod.weight)
            new = Int8Conv2d(mod, _int8_linear(q.reshape(q.shape[0], -1),
                                               mod.weight_quantizer.effective_step().detach().reshape(-1, 1), mod.bias))
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        swapped.append(name)
    return swapped


def espnet_dynamic_int8(model):
    """ESPnet's own --quantize_asr_model: torch dynamic int8 quantization of every float Linear."""
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
