"""One-pass all-in-one compression (Li et al. 2024): many nested systems of different depth, width and
precision that share one set of weights, trained in one run.

A system is (depth, ff, heads, bits): the first `depth` blocks of the encoder, the first `ff` fraction of
every encoder feed-forward's hidden units and the first `heads` fraction of every encoder self-attention's
heads, every quantized weight at `bits`. Units and heads are ordered once, before training, by importance
(a unit: the norm of its input row times the norm of its output column; a head: the norm of its query, key
and value rows times that of its output columns), so that a narrow system keeps those that matter most. A
narrow feed-forward runs on the first rows of its first quantized layer and the first columns of its second
(`narrow_feed_forward`: only its units are computed; `UnitMask`, zeroing the units beyond the width, where a
layer is not a quantized Linear), a narrow attention zeroes the heads beyond its width before the output
projection (heads are independent), so an exported narrow layer computes the same.
Precision: one shared float weight, one learnt LSQ step per bit-width (`NestedWeightQuantizer`).

The `all_in_one:` section of a quant conf (`AllInOneConfig`):

    all_in_one:
        depth: [4, 3, 2]        # encoder blocks kept (the first k)
        ff: [1, 0.5]            # fractions of the feed-forward units kept
        heads: [1]              # fractions of the self-attention heads kept (e.g. [1, 0.5])
        bits: [4, 2]            # weight bit-widths (numerics.BITS)
        systems: null           # or an explicit list of {depth, ff, bits[, heads]} instead of the product
        sampled: 1              # systems sampled per update besides the largest and the smallest
        kl_from: largest        # the others learn from the largest system's posteriors (or teacher, none)
        kl_weight: 1.0
        balance: sum            # an update minimises the sum of its systems' losses; largest: each other
                                # system's loss scaled to the largest's size (its value / its own, constant),
                                # so each system has an equal share of the update, however poor it is
"""
import dataclasses
import itertools
import random

import torch

from mpq_plugins.quant.config import from_mapping
from mpq_plugins.quant.numerics import WeightQuantizer, bits_label, check_bits


class AllInOneError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class NestedSystem:
    depth: int
    ff: float
    bits: object
    heads: float = 1

    @property
    def name(self):
        h = "" if self.heads == 1 else f"_h{str(self.heads).replace('.', 'p')}"
        return f"d{self.depth}_ff{str(self.ff).replace('.', 'p')}{h}_w{bits_label(self.bits)}"

    def size_key(self):
        return (self.depth, self.ff, self.heads, float(self.bits))


@dataclasses.dataclass
class AllInOneConfig:
    depth: list = None
    ff: list = dataclasses.field(default_factory=lambda: [1])
    heads: list = dataclasses.field(default_factory=lambda: [1])
    bits: list = dataclasses.field(default_factory=lambda: [8, 4])
    systems: list = None
    sampled: int = 1
    kl_from: str = "largest"
    kl_weight: float = 1.0
    balance: str = "sum"

    @classmethod
    def from_dict(cls, d, n_blocks, n_units, where="all_in_one", n_heads=None):
        """The section checked against the encoder it applies to (n_blocks blocks, n_units feed-forward units,
        n_heads attention heads: None when its attention cannot be narrowed)."""
        c = from_mapping(cls, d, where, AllInOneError)
        if c.systems is not None:
            if not isinstance(c.systems, list) or not c.systems:
                raise AllInOneError(f"{where}: systems is an empty list")
            raw = []
            for i, s in enumerate(c.systems):
                if not isinstance(s, dict) or not {"depth", "ff", "bits"} <= set(s) <= {"depth", "ff", "bits", "heads"}:
                    raise AllInOneError(f"{where}: systems[{i}] must be a mapping of depth, ff, bits (and heads), "
                                        f"got {s!r}")
                raw.append((s["depth"], s["ff"], s.get("heads", 1), s["bits"]))
        else:
            depth = c.depth if c.depth is not None else [n_blocks]
            for key, v in (("depth", depth), ("ff", c.ff), ("heads", c.heads), ("bits", c.bits)):
                if not isinstance(v, list) or not v:
                    raise AllInOneError(f"{where}: {key} is an empty list (or not a list)")
            raw = list(itertools.product(depth, c.ff, c.heads, c.bits))
        out = []
        for dep, ff, heads, bits in raw:
            if isinstance(dep, bool) or not isinstance(dep, int) or not 1 <= dep <= n_blocks:
                raise AllInOneError(f"{where}: depth {dep!r} is not a number of blocks of this encoder (1..{n_blocks})")
            for key, v, n, what in (("ff", ff, n_units, "feed-forward units"), ("heads", heads, n_heads, "attention heads")):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    raise AllInOneError(f"{where}: {key} {v!r} is not a fraction in (0, 1]")
                if v != 1 and n is None:
                    raise AllInOneError(f"{where}: {key} {v}: this encoder's {what} cannot be narrowed")
                if n is not None and abs(v * n - round(v * n)) > 1e-6:
                    raise AllInOneError(f"{where}: {key} {v} of {n} {what} is not a whole number of {what}")
            try:
                bits = check_bits(bits, f"{where}: bits")
            except ValueError as e:
                raise AllInOneError(str(e)) from None
            out.append(NestedSystem(dep, float(ff) if ff != 1 else 1, bits, float(heads) if heads != 1 else 1))
        if len(set(out)) != len(out):
            raise AllInOneError(f"{where}: a system is listed twice")
        if isinstance(c.sampled, bool) or not isinstance(c.sampled, int) or c.sampled < 0:
            raise AllInOneError(f"{where}: sampled must be an integer >= 0")
        if c.kl_from not in ("largest", "teacher", "none"):
            raise AllInOneError(f"{where}: kl_from {c.kl_from!r} is not largest, teacher or none")
        if c.balance not in ("sum", "largest"):
            raise AllInOneError(f"{where}: balance {c.balance!r} is not sum or largest")
        c.system_list = sorted(out, key=lambda s: s.size_key(), reverse=True)
        c.n_units, c.n_heads = n_units, n_heads
        return c

    @property
    def largest(self):
        return self.system_list[0]

    @property
    def smallest(self):
        return self.system_list[-1]

    def plan(self, rng):
        """The systems one update trains: the largest, the smallest and `sampled` others drawn by rng."""
        rest = self.system_list[1:-1]
        picked = rng.sample(rest, min(self.sampled, len(rest)))
        return [self.largest] + ([self.smallest] if len(self.system_list) > 1 else []) + picked

    def units(self, system):
        return int(round(system.ff * self.n_units))

    def kept_heads(self, system):
        return None if self.n_heads is None else int(round(system.heads * self.n_heads))

    def by_name(self, name):
        for s in self.system_list:
            if s.name == name:
                return s
        raise AllInOneError(f"no system {name!r} in this run (systems: {', '.join(s.name for s in self.system_list)})")


class NestedWeightQuantizer(torch.nn.Module):
    """One LSQ quantizer per bit-width over the one shared weight; `active` says which one runs."""

    def __init__(self, weight_shape, bits_list, per_channel=True):
        super().__init__()
        self.bits_list = list(bits_list)
        self.per_channel = per_channel
        self.quantizers = torch.nn.ModuleDict({bits_label(b): WeightQuantizer(weight_shape, b, per_channel)
                                               for b in self.bits_list})
        self.active = self.bits_list[0]

    @property
    def bits(self):
        return self.active

    def quantizer(self, bits=None):
        return self.quantizers[bits_label(self.active if bits is None else bits)]

    def forward(self, w):
        return self.quantizer()(w)

    def extra_repr(self):
        return f"bits={self.bits_list}, active={self.active}"


def attach_nested(model, names, bits_list, per_channel=True):
    """Give every quantized layer in names a NestedWeightQuantizer (layers from quantize_)."""
    for n in names:
        mod = model.get_submodule(n)
        mod.weight_quantizer = NestedWeightQuantizer(tuple(mod.weight.shape), bits_list, per_channel)


def nested_quantizers(model):
    return {n[: -len(".weight_quantizer")]: m for n, m in model.named_modules() if isinstance(m, NestedWeightQuantizer)}


def set_bits(model, bits):
    for q in nested_quantizers(model).values():
        q.active = bits


def unit_order(w_in, w_out):
    """Hidden units of a feed-forward (w_in: units x d, w_out: d x units) by importance, most important
    first: ||w_in[j, :]|| * ||w_out[:, j]||."""
    score = w_in.detach().float().norm(dim=1) * w_out.detach().float().norm(dim=0)
    return torch.argsort(score, descending=True, stable=True)


@torch.no_grad()
def order_units(lin_in, lin_out):
    """Permute the hidden units of a feed-forward (two Linear layers) by unit_order, in place: the
    layer computes the same, and its first k units are its k most important ones."""
    order = unit_order(lin_in.weight, lin_out.weight)
    lin_in.weight.copy_(lin_in.weight[order])
    if lin_in.bias is not None:
        lin_in.bias.copy_(lin_in.bias[order])
    lin_out.weight.copy_(lin_out.weight[:, order])
    return order


def narrow_feed_forward(lin_in, lin_out, width):
    """Run a feed-forward's two quantized Linear layers on their first `width` hidden units only (None: all):
    exactly the narrow feed-forward, at its cost."""
    lin_in.keep_out = lin_out.keep_in = width


class UnitMask:
    """A forward hook on a feed-forward's first Linear: its outputs beyond `width` units are zeroed, which
    is exactly the narrow feed-forward when the activation maps 0 to 0 (ReLU, Swish, GELU); for layers that
    are not quantized Linears (narrow_feed_forward's)."""

    def __init__(self, units):
        self.units = units
        self.width = units

    def __call__(self, module, args, out):
        if self.width >= self.units:
            return out
        mask = torch.zeros(self.units, dtype=out.dtype, device=out.device)
        mask[: self.width] = 1
        return out * mask


def seeded_plan(cfg, seed, update):
    """The plan of optimizer update `update` of a run with this seed: the same on every rank and after a
    resumption (the draw depends on nothing else)."""
    return cfg.plan(random.Random(seed * 1_000_003 + update))


@torch.no_grad()
def order_heads(ins, out, n_heads, per_head=()):
    """Permute the heads of a multi-head attention in place, most important first: ins, the Linear layers whose
    output rows are grouped by head (query, key, value, positional projection); out, the output projection
    (input columns grouped by head); per_head, tensors whose first dimension is the head (positional biases).
    A head's importance: the norm of its rows in ins times the norm of its columns in out. The attention
    computes the same (its heads are independent); returns the order."""
    d_k = out.weight.shape[1] // n_heads
    rows = torch.cat([lin.weight.detach().float().reshape(n_heads, -1) for lin in ins], dim=1)
    cols = out.weight.detach().float().reshape(out.weight.shape[0], n_heads, d_k).transpose(0, 1).reshape(n_heads, -1)
    order = torch.argsort(rows.norm(dim=1) * cols.norm(dim=1), descending=True, stable=True)
    idx = (order[:, None] * d_k + torch.arange(d_k, device=order.device)).flatten()
    for lin in ins:
        lin.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[idx])
    out.weight.copy_(out.weight[:, idx])
    for t in per_head:
        t.copy_(t[order])
    return order


class HeadMask:
    """A forward pre-hook on an attention's output projection: the heads beyond `width` contribute nothing,
    which is exactly the attention with only its first `width` heads."""

    def __init__(self, n_heads, d_k):
        self.n_heads, self.d_k, self.width = n_heads, d_k, n_heads

    def __call__(self, module, args):
        if self.width >= self.n_heads:
            return None
        x = args[0]
        mask = torch.zeros(self.n_heads * self.d_k, dtype=x.dtype, device=x.device)
        mask[: self.width * self.d_k] = 1
        return (x * mask,) + tuple(args[1:])
