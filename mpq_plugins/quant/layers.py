"""Quantization-aware versions of torch's Linear, Conv1d, Conv2d and Embedding.

Each is a subclass of the torch layer it replaces and keeps its parameters under the same names
(`weight`, `bias`), so float checkpoints load into it and ESPnet's trainer, averaging and DDP see
an ordinary module. It adds `weight_quantizer` (and, for Linear and convolutions,
`input_quantizer` when activations are quantized). `from_float` swaps a float layer in place of
itself, sharing its parameters.
"""
import torch
import torch.nn.functional as F

from mpq_plugins.quant.numerics import ActQuantizer, WeightQuantizer


class _QMixin:
    def _attach(self, bits, per_channel, act_bits=None, act_mode="lsq"):
        self.weight_quantizer = WeightQuantizer(tuple(self.weight.shape), bits, per_channel)
        self.input_quantizer = ActQuantizer(act_bits, act_mode) if act_bits else None

    def qweight(self):
        return self.weight_quantizer(self.weight)

    def qinput(self, x):
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    @classmethod
    def from_float(cls, mod, bits, per_channel=True, act_bits=None, act_mode="lsq"):
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in mod.__dict__.items()
                             if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(mod._parameters)       # the same Parameter objects
        new._buffers = dict(mod._buffers)
        new._modules = dict(mod._modules)
        new._attach(bits, per_channel, act_bits, act_mode)
        return new


class QLinear(_QMixin, torch.nn.Linear):
    # a narrow run (quant/nested.py): only the first `keep_out` outputs, or the first `keep_in` inputs (x has
    # only those features), of the quantized weight; None: all
    keep_out = None
    keep_in = None

    def forward(self, x):
        w, b = self.qweight(), self.bias
        if self.keep_out is not None:
            w, b = w[: self.keep_out], None if b is None else b[: self.keep_out]
        if self.keep_in is not None:
            w = w[:, : self.keep_in]
        return F.linear(self.qinput(x), w, b)


class QConv1d(_QMixin, torch.nn.Conv1d):
    def forward(self, x):
        return self._conv_forward(self.qinput(x), self.qweight(), self.bias)


class QConv2d(_QMixin, torch.nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(self.qinput(x), self.qweight(), self.bias)


class QEmbedding(_QMixin, torch.nn.Embedding):
    """Embedding tables are looked up, not multiplied: only the weight is quantized."""

    def _attach(self, bits, per_channel, act_bits=None, act_mode="lsq"):
        super()._attach(bits, per_channel, None, act_mode)

    def forward(self, x):
        return F.embedding(x, self.qweight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


QUANT_CLASS = {torch.nn.Linear: QLinear, torch.nn.Conv1d: QConv1d, torch.nn.Conv2d: QConv2d,
               torch.nn.Embedding: QEmbedding}
QUANT_LAYERS = tuple(QUANT_CLASS.values())


def quantized_modules(model):
    """{name: layer} of the quantization-aware layers of a model, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


def bit_allocation(model):
    """{name: bits} of the quantized layers (None for a layer whose mixed-precision search is still open)."""
    return {n: m.weight_quantizer.bits for n, m in quantized_modules(model).items()}
