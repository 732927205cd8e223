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
Other layers (depthwise convolutions: fbgemm's dynamic depthwise conv is 14x slower than float;
embeddings) keep their dequantized float weights.

With `calibration` (a function that runs the model on a few inputs; for ESPnet, model.encode on a
few utterances), every chain of Conv2d and ReLU pairs (a Sequential, all quantized, such as ESPnet's
convolutional subsampling Conv2dSubsampling*) is served statically instead: the features are
quantized once, each conv runs as fbgemm's int8 conv with its ReLU fused and its output kept in
8 bits (activation scales from the calibration), and only the last output is dequantized. On the
default Conformer this takes the subsampling from 19 ms (float first conv, dynamic int8 second
conv, float ReLUs) to 7 ms for a 10-s utterance, where the float subsampling takes 23 ms.

The int8 Linear (and pointwise) kernels come from torch's quantized engine `engine` names: fbgemm,
onednn, or auto (the default: onednn where the CPU has AMX int8 tiles and torch has onednn, torch's
current engine elsewhere, x86 = fbgemm on x86; on a 2-core Xeon with AMX, onednn's dynamic int8 Linear
took 79 us where fbgemm's took 152 for a 250 x 144 by 144 x 576 product, with the same error). A module
runs on the engine it was packed with, whatever engine is current later. The convolutions keep torch's
current engine (fbgemm on x86, whose saturation the static chain's 7-bit activations are sized for).

Sub-8-bit levels fit in int8, so 2- to 8-bit systems all serve this way. Activations are
quantized by the kernel at run time, so hypotheses may differ slightly from the fake-quantized
model's; `mpq_plugins.bin.benchmark_quant` reports both. Never `torch._int_mm` on CPU: measured
40-110x slower than float here.
"""
import contextlib

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized.dynamic as nnqd

from mpq_plugins.quant.layers import QConv1d, QConv2d, QLinear

MIN_DENSE = 16     # values per output channel below which a conv stays float (the 1 x 3 x 3 first conv)
ENGINES = ("auto", "fbgemm", "onednn")


def cpu_flags(path="/proc/cpuinfo"):
    """The instruction-set flags of this CPU (empty where /proc/cpuinfo does not exist)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def linear_engine(engine="auto", flags=None):
    """The quantized engine whose int8 Linear kernels serve: `engine` itself, or for auto onednn on a CPU
    with AMX int8 (flags: cpu_flags()) and None (torch's current engine) elsewhere."""
    if engine not in ENGINES:
        raise ValueError(f"int8 serving engine {engine!r} is not one of {', '.join(ENGINES)}")
    supported = torch.backends.quantized.supported_engines
    if engine == "auto":
        amx = "amx_int8" in (cpu_flags() if flags is None else flags)
        return "onednn" if amx and "onednn" in supported else None
    if engine not in supported:
        raise ValueError(f"int8 serving engine {engine!r}: this torch has only {', '.join(supported)}")
    return engine


@contextlib.contextmanager
def packing_engine(engine):
    """torch's quantized engine set to engine (None: left as it is) while modules are packed, then restored."""
    old = torch.backends.quantized.engine
    engine = engine or old
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


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


class StaticInt8ConvReLU(torch.nn.Module):
    """Conv2d+ReLU pairs run end to end in int8: input quantized once with a calibrated scale, each
    conv an fbgemm int8 conv with fused ReLU and a calibrated output scale, one dequantize at the end.
    Activations use 7 of their 8 bits (0..127): fbgemm's x86 kernels add pairs of uint8 x int8
    products in int16, which saturates with full-range activations and 8-bit weights (measured:
    25-34% error on the first subsampling conv at 0..255, 3% over the subsampling at 0..127)."""

    def __init__(self, in_scale, convs):
        super().__init__()
        self.in_scale = float(in_scale)
        self.convs = torch.nn.ModuleList(convs)

    def forward(self, x):
        q = torch.quantize_per_tensor(x, self.in_scale, 64, torch.quint8)
        for conv in self.convs:
            q = conv(q)
        return q.dequantize()


def _conv_relu_chain(mod):
    """The QConv2d layers of a Sequential that alternates QConv2d and ReLU (and nothing else), or None."""
    if not isinstance(mod, torch.nn.Sequential) or len(mod) == 0 or len(mod) % 2:
        return None
    convs = list(mod)[0::2]
    if not all(isinstance(c, QConv2d) and c.groups == 1 and c.padding_mode == "zeros"
               and not isinstance(c.padding, str) and c.input_quantizer is None for c in convs):
        return None
    if not all(type(r) is torch.nn.ReLU for r in list(mod)[1::2]):
        return None
    return convs


def _static_conv_relu(chain, ranges):
    """Build the StaticInt8ConvReLU of a chain from its observed ranges: [input absmax, ReLU maxima...]."""
    convs = []
    for conv, top in zip(chain, ranges[1:]):
        levels, step = conv.weight_quantizer.int_weight(conv.weight)
        new = nniq.ConvReLU2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, groups=1, bias=conv.bias is not None)
        new.set_weight_bias(_per_channel(levels, step), None if conv.bias is None else conv.bias.detach().float())
        new.scale, new.zero_point = max(top, 1e-8) / 127.0, 0
        convs.append(new)
    return StaticInt8ConvReLU(max(ranges[0], 1e-8) / 63.0, convs)


def observe_conv_relu_ranges(chains, calibration):
    """{name: [input absmax, output max of each ReLU]} of the Conv2d+ReLU chains ({name: Sequential})
    while calibration() runs the model on its calibration inputs."""
    ranges = {name: [0.0] * (1 + len(mod) // 2) for name, mod in chains.items()}
    hooks = []
    for name, mod in chains.items():
        def seen(_mod, args, out, r=ranges[name]):
            r[0] = max(r[0], args[0].abs().max().item())
        hooks.append(mod.register_forward_hook(seen))
        for i, relu in enumerate(list(mod)[1::2], 1):
            def relu_seen(_mod, _args, out, r=ranges[name], i=i):
                r[i] = max(r[i], out.max().item())
            hooks.append(relu.register_forward_hook(relu_seen))
    try:
        with torch.no_grad():
            calibration()
    finally:
        for h in hooks:
            h.remove()
    return ranges


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


def to_int8_serving(model, calibration=None, engine="auto"):
    """Swap quantized Linear, pointwise Conv1d and dense Conv2d layers for int8 kernels; returns their names.
    With calibration (a function that runs the model on a few inputs), Conv2d+ReLU chains such as
    the convolutional subsampling are served statically in int8 (StaticInt8ConvReLU). engine: the
    Linear kernels' (auto, fbgemm, onednn: linear_engine)."""
    lin_engine = linear_engine(engine)
    swapped = []
    if calibration is not None:
        chains = {name: mod for name, mod in model.named_modules() if _conv_relu_chain(mod)}
        for name, rng in observe_conv_relu_ranges(chains, calibration).items():
            model.set_submodule(name, _static_conv_relu(_conv_relu_chain(chains[name]), rng))
            swapped.append(name)
    for name, mod in list(model.named_modules()):
        kind = _int8_kind(mod)
        if kind is None:
            continue
        levels, step = mod.weight_quantizer.int_weight(mod.weight)
        if kind == "linear":
            with packing_engine(lin_engine):
                new = _int8_linear(levels, step, mod.bias)
        elif kind == "pointwise":
            with packing_engine(lin_engine):
                new = Int8Pointwise(_int8_linear(levels[:, :, 0], step, mod.bias))
        else:
            new = _int8_conv2d(mod, levels, step)
        model.set_submodule(name, new)
        swapped.append(name)
    return swapped


def dynamic_int8_linears(model):
    """torch's dynamic int8 quantization of every float Linear (what ESPnet's --quantize_asr_model does):
    the baseline the benchmark compares our serving with."""
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
