"""Mixed precision learnt in training: a Gumbel-softmax choice of bit-width per layer.

Each searched layer keeps one float weight and one LSQ quantizer per candidate bit-width, each with
its own learnt step; its weight in the forward pass is sum_b g_b * Q_b(W), g = GumbelSoftmax(logits,
tau). The expected size, sum over layers of n_l * sum_b softmax(logits_l)_b * b, is what the budget
penalty sees. After `search_steps` training steps every layer is fixed to one candidate: the
allocation that is most probable under the learnt logits among those within the budget (the exact
knapsack of mpq_plugins.quant.search with -log p as the cost of a choice), and what that leaves of
the budget goes to the layers that lose the least probability per extra bit (fill_budget), so the
budget is met as exactly as whole layers allow. From then on a layer is an ordinary quantized layer at its bit-width.

- one-stage MPQ (`method: one_stage`): training continues after the fix to the final quantized
  model: precision learning and quantized-weight estimation in one run.
- differentiable search (`method: supernet`): the first stage of a two-stage method; its
  allocation is retrained from the float model by uniform-style QAT with the bits fixed.

The `mixed_precision:` part of a `quantization:` section:

    mixed_precision:
        method: one_stage          # one_stage | supernet | kl | hessian
        candidates: [2, 3, 4, 6, 8]
        budget: {avg_bits: 3.0}    # or {size_mb: 1.2}: the packed file
        search_steps: 200          # training steps before the fix (one_stage, supernet)
        tau: [1.0, 0.1]            # Gumbel-softmax temperature, annealed geometrically over search_steps
        size_weight: 20.0          # penalty per average bit above the budget (expected size): strong
                                   # enough that the search reaches the budget before the fix (at 2.0
                                   # a 3-bit search on the default corpus still expected 4.0 bits)
        size_weight_lr: 0.0        # > 0: after each step above the budget the weight grows by this times the
                                   # excess in average bits (dual ascent), so the search reaches any budget
                                   # (at 2.5 bits, a fixed 20 left it at 2.76: the KL pulled back as hard)
        kl_weight: 1.0             # KL from the float teacher's posteriors (CTC and decoder) to the model's
        kl_after_fix: true         # one_stage: keep the KL once the bits are fixed (false: the teacher runs
                                   # only while searching; its forward is ~20% of a fine-tuning step)
        logit_lr: 0.05             # peak learning rate of the precision logits (their own group; the
                                   # scheduler shapes it as the model's), whatever the fine-tuning lr
        n_utts: 32                 # kl, hessian: held-out utterances for the sensitivities
        hutchinson_samples: 16     # hessian: Rademacher probes
"""
import dataclasses
import math

import torch
import torch.nn.functional as F

from mpq_plugins.quant.numerics import WeightQuantizer, fake_quant, scale_grad
from mpq_plugins.quant.search import (Budget, BudgetError, average_bits, check_candidates, fill_budget,  # noqa: F401
                                      knapsack, layer_costs)

METHODS = ("one_stage", "supernet", "kl", "hessian")


@dataclasses.dataclass
class MixedPrecisionConfig:
    method: str = "one_stage"
    candidates: list = dataclasses.field(default_factory=lambda: [2, 3, 4, 6, 8])
    budget: dict = None
    search_steps: int = 200
    tau: list = dataclasses.field(default_factory=lambda: [1.0, 0.1])
    size_weight: float = 20.0
    size_weight_lr: float = 0.0
    kl_weight: float = 1.0
    kl_after_fix: bool = True
    logit_lr: float = 0.05
    n_utts: int = 32
    hutchinson_samples: int = 16

    @classmethod
    def from_dict(cls, d, where="mixed_precision"):
        from mpq_plugins.quant.config import from_mapping
        c = from_mapping(cls, d, where, BudgetError)
        if c.method not in METHODS:
            raise BudgetError(f"{where}: method {c.method!r} is not one of {', '.join(METHODS)}")
        c.candidates = check_candidates(c.candidates, f"{where}: candidates")
        if c.budget is None:
            raise BudgetError(f"{where}: budget is missing (avg_bits or size_mb)")
        c.budget_obj = Budget.from_dict(c.budget, f"{where}: budget")
        if c.budget_obj.avg_bits is not None and c.budget_obj.avg_bits < min(c.candidates):
            raise BudgetError(f"{where}: budget avg_bits {c.budget_obj.avg_bits} is below what the smallest "
                              f"candidate ({min(c.candidates)} bits) allows")
        if not (isinstance(c.tau, list) and len(c.tau) == 2 and all(t > 0 for t in c.tau)):
            raise BudgetError(f"{where}: tau must be [start, end], both positive")
        if not isinstance(c.size_weight_lr, (int, float)) or c.size_weight_lr < 0:
            raise BudgetError(f"{where}: size_weight_lr must be a number >= 0")
        if not isinstance(c.kl_after_fix, bool):
            raise BudgetError(f"{where}: kl_after_fix must be true or false")
        if not isinstance(c.search_steps, int) or c.search_steps < 1:
            raise BudgetError(f"{where}: search_steps must be a positive integer")
        return c


class MixedWeightQuantizer(torch.nn.Module):
    """Candidates' quantizers, the logits of the choice, and (once fixed) the chosen bit-width.

    `fixed` is a float buffer (0 while searching): a bit-width is a config-like value, but the
    fix happens in training, so it must survive checkpoints and resumption."""

    def __init__(self, weight_shape, candidates, per_channel=True):
        super().__init__()
        self.candidates = list(candidates)
        self.per_channel = per_channel
        self.quantizers = torch.nn.ModuleList(WeightQuantizer(weight_shape, b, per_channel) for b in candidates)
        self.logits = torch.nn.Parameter(torch.zeros(len(candidates)))
        self.register_buffer("fixed", torch.zeros(()))
        self.tau = 1.0

    def chosen(self):
        """Index of the fixed candidate, or None while searching."""
        b = int(round(float(self.fixed)))
        if b == 0:
            return None
        if b not in self.candidates:
            raise ValueError(f"fixed bit-width {float(self.fixed)} is not a candidate {self.candidates} "
                             "(checkpoints averaged across the fix?)")
        return self.candidates.index(b)

    @property
    def bits(self):
        i = self.chosen()
        return self.candidates[i] if i is not None else None

    def probs(self):
        return self.logits.softmax(-1)

    def expected_bits(self):
        return (self.probs() * torch.tensor(self.candidates, dtype=self.logits.dtype)).sum()

    def forward(self, w):
        i = self.chosen()
        if i is None and not self.training:
            i = int(self.logits.argmax())         # validation while searching: the likeliest choice
        if i is not None:
            return self.quantizers[i](w)
        g = F.gumbel_softmax(self.logits, tau=self.tau, hard=False)
        return self.mix(w, g)

    def mix(self, w, g):
        """sum_k g_k * Q_k(w), every candidate in one batch of tensor ops (the same values and gradients
        as the candidates' own quantizers one by one, with a fifth of the operations)."""
        for q in self.quantizers:
            if not q.initialised():
                q.init_from(w)
        lead = (len(self.quantizers),) + (1,) * w.dim()
        consts = getattr(self, "_mix_consts", None)          # the candidates' bits and LSQ gradient scales
        if consts is None or consts[0].device != w.device:
            bits = torch.tensor([float(q.bits) for q in self.quantizers], device=w.device).view(lead)
            gscale = torch.tensor([q.grad_scale() for q in self.quantizers], device=w.device).view(lead)
            consts = self._mix_consts = (bits, gscale)
        bits, gscale = consts
        step = scale_grad(torch.stack([q.log_step for q in self.quantizers]), gscale).exp()   # (K, *step shape)
        return (g.view(lead).to(w.dtype) * fake_quant(w.unsqueeze(0), step, bits)).sum(0)

    def extra_repr(self):
        return f"candidates={self.candidates}, fixed={self.bits}"


def mixed_quantizers(model):
    return {n[: -len(".weight_quantizer")]: m for n, m in model.named_modules() if isinstance(m, MixedWeightQuantizer)}


def attach_mixed(model, names, candidates, per_channel=True):
    """Give every quantized layer in names a MixedWeightQuantizer (layers from quantize_)."""
    for n in names:
        mod = model.get_submodule(n)
        mod.weight_quantizer = MixedWeightQuantizer(tuple(mod.weight.shape), candidates, per_channel)


def numels(model, names):
    return {n: model.get_submodule(n).weight.numel() for n in names}


def expected_avg_bits(model):
    mq = mixed_quantizers(model)
    n = numels(model, mq)
    total = sum(n.values())
    return sum(n[k] * q.expected_bits() for k, q in mq.items()) / total


def budget_avg_bits(budget, nums, fixed_bytes=0):
    """The budget as average bits per searched weight (for the expected-size penalty)."""
    if budget.avg_bits is not None:
        return budget.avg_bits
    return (budget.size_mb * 1e6 - fixed_bytes) * 8 / sum(nums.values())


def fix_allocation(model, budget, fixed_bytes=0):
    """Fix every searching layer to the likeliest allocation within budget, filled up to the budget
    (fill_budget); returns {layer: bits}."""
    mq = mixed_quantizers(model)
    nums = numels(model, mq)
    cands = next(iter(mq.values())).candidates
    costs, capacity = layer_costs(nums, cands, budget, fixed_bytes)
    values = {k: (-q.logits.detach().log_softmax(-1)).tolist() for k, q in mq.items()}
    pick = fill_budget(costs, values, knapsack(costs, values, capacity), capacity)
    with torch.no_grad():
        for k, q in mq.items():
            q.fixed.fill_(float(q.candidates[pick[k]]))
    return {k: q.bits for k, q in mq.items()}


def finalize(model):
    """Replace each fixed MixedWeightQuantizer by its chosen WeightQuantizer, in place, leaving the
    plain quantized model that `with_fixed_bits` of its config rebuilds; returns {layer: bits}."""
    out = {}
    for k, q in mixed_quantizers(model).items():
        i = q.chosen()
        if i is None:
            raise ValueError(f"{k}: the bit-width is not fixed yet (search_steps not reached)")
        model.get_submodule(k).weight_quantizer = q.quantizers[i]
        out[k] = q.candidates[i]
    if hasattr(model, "mpq_teardown"):   # the ESPnet training wrapper (mpq_plugins.espnet_task)
        model.mpq_teardown()
    return out


def tau_at(step, cfg):
    t0, t1 = cfg.tau
    frac = min(step / max(cfg.search_steps, 1), 1.0)
    return t0 * (t1 / t0) ** frac


def is_searching(model):
    return any(q.chosen() is None for q in mixed_quantizers(model).values())


def penalty(expected_bits, budget_bits, weight):
    """weight * (expected average bits - budget)+: the size penalty while searching (weight: size_weight,
    or the one raised by size_weight_lr that the training wrapper keeps)."""
    return weight * F.relu(expected_bits - budget_bits)


HEADER_BYTES = 4096   # the packed file's header is about 2 kB for a Conformer; counted generously


def fixed_bytes(model):
    """Bytes of the packed file that do not depend on the bit-widths: float tensors, integer buffers,
    one set of steps per quantized layer, and the header (HEADER_BYTES)."""
    from mpq_plugins.quant.config import quantized_modules
    qmods = quantized_modules(model)
    skip = {f"{n}.weight" for n in qmods}
    total = HEADER_BYTES
    for k, t in model.state_dict().items():
        if k in skip or ".weight_quantizer." in k:
            continue
        total += t.numel() * (4 if t.is_floating_point() else 8)
    for n, m in qmods.items():
        total += 4 * (m.weight.shape[0] if getattr(m.weight_quantizer, "per_channel", True) else 1)
    return total


def with_fixed_bits(quant, bits):
    """The quantization section that rebuilds a finalized model: the same options, every layer's
    bit-width by its exact name, no mixed_precision part."""
    import re
    out = {k: v for k, v in (quant or {}).items() if k != "mixed_precision"}
    out["bits"] = {**(out.get("bits") or {}), **{re.escape(n): b for n, b in bits.items()}}
    return out
