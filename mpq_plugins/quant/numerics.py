"""Quantizer numerics, usable without ESPnet.

Weights: signed symmetric grids, one step per output channel (or one per tensor). The bit-widths
(BITS) and their levels, in steps:
- b = 3..8: integers -Q..Q with zero, Q = 2^(b-1) - 1 (4 bits: -7..7, as AQT does);
- 2: four levels -3/2, -1/2, 1/2, 3/2 (no zero: all four codes of two bits are used);
- 1.6: ternary -1, 0, 1, stored five values to a byte (3^5 = 243 <= 256), so 1.6 bits a weight;
- 1: binary -1/2, 1/2 (sign times half the step, the +-alpha of binary networks).
The grids without zero round x/step - 1/2 and add the half back; as integers (to_int, packing,
the int8 kernels) they are the odd numbers 2q at half the step. The step is learnt (LSQ: Esser et al. 2020) with the gradient scale
1/sqrt(N * Q), N the number of values that share the step; rounding passes gradients straight
through. The first step is the MSE-optimal clipping of the weight it quantizes.

Activations (optional): signed symmetric, one step per tensor, at 8 or 4 bits, either learnt
(LSQ) or from a moving average of the largest magnitude.

Learnt steps are stored as their logarithm (`log_step`, step = exp(log_step)). With Adam, every
parameter moves by about the learning rate per update whatever its gradient's size; a raw 8-bit
step (about max|w| / 127, often below 1e-3) is pushed through zero within a few hundred updates at
lr 1e-3 and the channel dies (measured: 8-bit QAT of the default Conformer ended with 5-90
non-positive steps per layer and decoded garbage). In the log domain an update changes the step by
a fraction instead, at any bit-width. The LSQ gradient scale is applied to the log-step.

A log-step of NaN means "not initialised yet": quantizers initialise it from the first tensor they
see, so that a model can be built first and its float weights loaded afterwards (ESPnet's
--init_param) before any step is chosen.
"""
import math

import torch

BITS = (1, 1.6, 2, 3, 4, 5, 6, 7, 8)
TERNARY = 1.6
EPS = 1e-8
BITS_TEXT = "1, 1.6 (ternary), 2, 3, 4, 5, 6, 7, 8"


def check_bits(bits, what="bit-width"):
    """bits as the canonical value (an int, or 1.6); anything else is one error naming what exists."""
    if isinstance(bits, float) and abs(bits - TERNARY) < 1e-9:
        return TERNARY
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"{what} {bits!r} is not one of {BITS_TEXT}")
    return bits


def parse_bits(text):
    """A bit-width written as text ("4", "1.6") -> its canonical value; ValueError otherwise."""
    v = float(text)
    return check_bits(int(v) if v == int(v) else v)


def bits_label(bits):
    """The bit-width as it appears in names: 4 -> "4", 1.6 -> "1p6"."""
    return str(bits).replace(".", "p")


def grid(bits):
    """(h, offset) of a bit-width's levels: values offset + k in [-h, h] steps (k an integer)."""
    if bits == TERNARY:
        return 1.0, 0.0
    if bits <= 2:
        return (2 ** bits - 1) / 2, 0.5
    return float(2 ** (bits - 1) - 1), 0.0


def qmax(bits):
    """Largest level of a bit-width, in steps (3..8 bits: 2^(b-1) - 1; 2 bits: 3/2; 1.6: 1; 1: 1/2)."""
    return grid(bits)[0]


def positive_levels(bits):
    """How many levels above zero (LSQ's Q_P in its gradient scale)."""
    return int(math.ceil(qmax(bits)))


def int_unit(bits):
    """The integer levels' unit in steps: 1/2 for the grids without zero (odd integers), else 1."""
    return 0.5 if grid(bits)[1] else 1.0


def storage_bits(bits):
    """Bits a weight takes in the packed file (1.6 for ternary: five to a byte)."""
    return float(bits)


TRITS = 5   # ternary values in a byte


def storage_bytes(n, bits):
    """Bytes of n weights at `bits` in the packed file (mpq_plugins.quant.packing)."""
    return math.ceil(n / TRITS) if bits == TERNARY else math.ceil(n * bits / 8)


def round_ste(x):
    """Round to the nearest integer; the gradient passes straight through."""
    return (x.round() - x).detach() + x


def scale_grad(x, g):
    """x in the forward pass; its gradient multiplied by g in the backward pass."""
    return (x - x * g).detach() + x * g


def fake_quant(x, step, bits):
    """Quantize-dequantize onto the grid of `bits` (STE and LSQ gradients)."""
    h, off = grid(bits)
    return fake_quant_grid(x, step, h, off)


def fake_quant_grid(x, step, h, off):
    """(round(clamp(x / step, -h, h) - off) + off) * step; h and off may be tensors that broadcast."""
    u = torch.clamp(x / step, -h, h)
    return (round_ste(u - off) + off) * step


def to_int(x, step, bits):
    """The levels of x as integers in units of int_unit(bits) steps (int8; every grid fits)."""
    h, off = grid(bits)
    u = torch.clamp(x / step, -h, h)
    return ((torch.round(u - off) + off) / int_unit(bits)).round().to(torch.int8)


def _channel_view(w, per_channel):
    """w as (channels, values per channel)."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def mse_step(w, bits, per_channel=True, grid=40):
    """The step that minimises the squared quantization error, searched over clipping ratios
    0.2..1 of the largest magnitude (0.05..1 at 2 bits and below, where the best binary level is near
    the mean magnitude), per channel or per tensor; shape broadcasts against w."""
    v = _channel_view(w.detach().float(), per_channel)
    peak = v.abs().amax(dim=1, keepdim=True).clamp_min(EPS)
    best_err = torch.full_like(peak, float("inf"))
    best = peak / qmax(bits)
    for r in torch.linspace(0.05 if bits <= 2 else 0.2, 1.0, grid, device=v.device):
        s = peak * r / qmax(bits)
        err = ((fake_quant(v, s, bits) - v) ** 2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    shape = (w.shape[0],) + (1,) * (w.dim() - 1) if per_channel else (1,) * w.dim()
    return best.reshape(shape)


class WeightQuantizer(torch.nn.Module):
    """LSQ weight quantizer. The bit-width is a plain attribute (it comes from the config), never
    a tensor: ESPnet's checkpoint averaging would sum integer tensors."""

    def __init__(self, weight_shape, bits, per_channel=True):
        super().__init__()
        self.bits = check_bits(bits)
        self.per_channel = per_channel
        shape = (weight_shape[0],) + (1,) * (len(weight_shape) - 1) if per_channel else (1,) * len(weight_shape)
        self.log_step = torch.nn.Parameter(torch.full(shape, math.nan))
        self._ready = False
        self._frozen = None   # (versions, quantized weight) cached for inference
        n = 1
        for d in (weight_shape[1:] if per_channel else weight_shape):
            n *= d
        self.values_per_step = n

    def initialised(self):
        if not self._ready:   # checked once, not at every step: a tensor comparison syncs
            self._ready = bool(torch.isfinite(self.log_step).all())
        return self._ready

    @property
    def step(self):
        """The step (a tensor computed from log_step)."""
        return self.log_step.exp()

    def init_from(self, w):
        with torch.no_grad():
            self.log_step.copy_(mse_step(w, self.bits, self.per_channel).log())
        self._ready = True

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False
        super()._load_from_state_dict(*args, **kwargs)

    def grad_scale(self):
        """LSQ's gradient scale of the step: 1 / sqrt(values per step * Q)."""
        return 1.0 / (self.values_per_step * positive_levels(self.bits)) ** 0.5

    def effective_step(self):
        """The step as the forward pass uses it: exp(log_step), the LSQ gradient scale on log_step."""
        return scale_grad(self.log_step, self.grad_scale()).exp()

    def forward(self, w):
        if not self.initialised():
            self.init_from(w)
        if self.training or torch.is_grad_enabled():
            self._frozen = None
            return fake_quant(w, self.effective_step(), self.bits)
        # inference: the same result while neither the weight nor the step changes (beam search
        # calls the decoder once per output token; re-quantizing its weights each time cost ~2x)
        key = (w.data_ptr(), w._version, self.log_step._version)
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, fake_quant(w, self.effective_step(), self.bits))
        return self._frozen[1]

    def int_weight(self, w):
        """(int8 levels, unit) of w: levels * unit is exactly what forward computes (unit: the step, or
        half of it for the grids without zero)."""
        if not self.initialised():
            self.init_from(w)
        with torch.no_grad():
            step = self.effective_step()
            return to_int(w, step, self.bits), (step * int_unit(self.bits)).detach().clone()

    def extra_repr(self):
        return f"bits={self.bits}, per_channel={self.per_channel}"


class ActQuantizer(torch.nn.Module):
    """Per-tensor activation quantizer: mode 'lsq' (learnt step, stored as `log_step`) or 'minmax'
    (`ema_step`, a moving average of the largest magnitude over Q, momentum 0.9, updated in training)."""

    def __init__(self, bits, mode="lsq", momentum=0.9):
        super().__init__()
        self.bits = check_bits(bits, "activation bit-width")
        if not isinstance(self.bits, int) or self.bits < 2:
            raise ValueError(f"activation bit-width {bits!r} is not one of 2..8")
        if mode not in ("lsq", "minmax"):
            raise ValueError(f"activation quantizer mode {mode!r} is not lsq or minmax")
        self.mode, self.momentum = mode, momentum
        if mode == "lsq":
            self.log_step = torch.nn.Parameter(torch.tensor(math.nan))
        else:
            self.register_buffer("ema_step", torch.zeros(()))   # 0: not initialised
        self._ready = False

    @property
    def step(self):
        return self.log_step.exp() if self.mode == "lsq" else self.ema_step

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x):
        q = qmax(self.bits)
        if not self._ready:
            with torch.no_grad():
                if self.mode == "lsq" and not torch.isfinite(self.log_step):
                    self.log_step.copy_((2 * x.detach().abs().mean() / q ** 0.5).clamp_min(EPS).log())
                elif self.mode == "minmax" and self.ema_step.item() <= 0:
                    self.ema_step.copy_((x.detach().abs().max() / q).clamp_min(EPS))
            self._ready = True
        if self.mode == "minmax":
            if self.training:
                with torch.no_grad():
                    self.ema_step.mul_(self.momentum).add_((1 - self.momentum) * x.detach().abs().max().clamp_min(EPS) / q)
            step = self.ema_step
        else:
            step = scale_grad(self.log_step, 1.0 / (x.numel() * q) ** 0.5).exp()
        return fake_quant(x, step, self.bits)

    def extra_repr(self):
        return f"bits={self.bits}, mode={self.mode}"
