"""Mixed precision learnt in training: a Gumbel-softmax choice of bit-width per layer.

Each searched layer keeps one float weight and one LSQ quantizer per candidate bit-width, each with
its own learnt step; its weight in the forward pass is sum_b g_b * Q_b(W), g = GumbelSoftmax(logits,
tau). The expected size, sum over layers of n_l * sum_b softmax(logits_l)_b * b, is what the budget
penalty sees. After `search_steps` optimizer updates every layer is fixed to one candidate: the
allocation that is most probable under the learnt logits among those within the budget (the exact
knapsack of mpq_plugins.quant.allocation with -log p as the cost of a choice), and what that leaves of
the budget goes to the layers that lose the least probability per extra bit (fill_budget), so the
budget is met as exactly as whole layers allow. `finalize` then replaces each layer's candidates by
its chosen quantizer: an ordinary quantized layer at its bit-width.

- one-stage MPQ: training continues after the fix to the final quantized model: precision
  learning and quantized-weight estimation in one run.
- differentiable search (supernet): the first stage of a two-stage method; its allocation is
  retrained from the float model by uniform-style QAT with the bits fixed.

The options are the `mixed_precision:` part of a quantization section (config.MixedPrecisionConfig).
"""
import torch
import torch.nn.functional as F

from mpq_plugins.quant.allocation import fill_budget, knapsack, layer_costs
from mpq_plugins.quant.numerics import WeightQuantizer, fake_quant_grid, grid, scale_grad, storage_bits


class MixedWeightQuantizer(torch.nn.Module):
    """Candidates' quantizers, the logits of the choice, and (once fixed) the chosen bit-width.

    `fixed` is a float buffer (0 while searching): a bit-width is a config-like value, but the
    fix happens in training, so it must survive checkpoints and resumption; float, because ESPnet's
    checkpoint averaging sums integer tensors."""

    def __init__(self, weight_shape, candidates, per_channel=True, hard=False):
        super().__init__()
        self.candidates = list(candidates)
        self.hard = hard
        self.per_channel = per_channel
        self.quantizers = torch.nn.ModuleList(WeightQuantizer(weight_shape, b, per_channel) for b in candidates)
        self.logits = torch.nn.Parameter(torch.zeros(len(candidates)))
        self.register_buffer("fixed", torch.zeros(()))
        self.tau = 1.0

    def chosen(self):
        """Index of the fixed candidate, or None while searching."""
        b = float(self.fixed)
        if b == 0:
            return None
        near = [i for i, c in enumerate(self.candidates) if abs(c - b) < 1e-3]
        if not near:
            raise ValueError(f"fixed bit-width {b} is not a candidate {self.candidates} "
                             "(checkpoints averaged across the fix?)")
        return near[0]

    @property
    def bits(self):
        i = self.chosen()
        return self.candidates[i] if i is not None else None

    def probs(self):
        return self.logits.softmax(-1)

    def expected_bits(self):
        """Expected stored bits a weight (ternary counts 1.6)."""
        costs = torch.tensor([storage_bits(b) for b in self.candidates], dtype=self.logits.dtype, device=self.logits.device)
        return (self.probs() * costs).sum()

    def forward(self, w):
        i = self.chosen()
        if i is None and not self.training:
            i = int(self.logits.argmax())         # validation while searching: the likeliest choice
        if i is not None:
            return self.quantizers[i](w)
        g = F.gumbel_softmax(self.logits, tau=self.tau, hard=self.hard)
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
            h = torch.tensor([grid(q.bits)[0] for q in self.quantizers], device=w.device).view(lead)
            off = torch.tensor([grid(q.bits)[1] for q in self.quantizers], device=w.device).view(lead)
            gscale = torch.tensor([q.grad_scale() for q in self.quantizers], device=w.device).view(lead)
            consts = self._mix_consts = (h, off, gscale)
        h, off, gscale = consts
        step = scale_grad(torch.stack([q.log_step for q in self.quantizers]), gscale).exp()   # (K, *step shape)
        return (g.view(lead).to(w.dtype) * fake_quant_grid(w.unsqueeze(0), step, h, off)).sum(0)

    def extra_repr(self):
        return f"candidates={self.candidates}, fixed={self.bits}"


def mixed_quantizers(model):
    return {n[: -len(".weight_quantizer")]: m for n, m in model.named_modules() if isinstance(m, MixedWeightQuantizer)}


def attach_mixed(model, names, candidates, per_channel=True, hard=False):
    """Give every quantized layer in names a MixedWeightQuantizer (layers from quantize_)."""
    for n in names:
        mod = model.get_submodule(n)
        mod.weight_quantizer = MixedWeightQuantizer(tuple(mod.weight.shape), candidates, per_channel, hard)


def numels(model, names):
    return {n: model.get_submodule(n).weight.numel() for n in names}


def expected_avg_bits(model):
    mq = mixed_quantizers(model)
    n = numels(model, mq)
    total = sum(n.values())
    return sum(n[k] * q.expected_bits() for k, q in mq.items()) / total


def budget_avg_bits(budget, nums, fixed_bytes=0, n_params=None):
    """The budget as average stored bits per searched weight (for the expected-size penalty): what the
    whole-file budget leaves once the fixed bytes are paid."""
    n_params = n_params if n_params is not None else sum(nums.values())
    return (budget.file_bytes(n_params) - fixed_bytes) * 8 / sum(nums.values())


def fix_allocation(model, budget, fixed_bytes=0, n_params=None):
    """Fix every searching layer to the likeliest allocation within budget, filled up to the budget
    (fill_budget); returns {layer: bits}."""
    mq = mixed_quantizers(model)
    nums = numels(model, mq)
    cands = next(iter(mq.values())).candidates
    costs, capacity = layer_costs(nums, cands, budget, fixed_bytes, n_params)
    values = {k: (-q.logits.detach().log_softmax(-1)).tolist() for k, q in mq.items()}
    pick = fill_budget(costs, values, knapsack(costs, values, capacity), capacity)
    with torch.no_grad():
        for k, q in mq.items():
            q.fixed.fill_(float(q.candidates[pick[k]]))
    return {k: q.bits for k, q in mq.items()}


def finalize(model):
    """Replace each fixed MixedWeightQuantizer by its chosen WeightQuantizer, in place, leaving the
    plain quantized model that `config.with_fixed_bits` of its config rebuilds; returns {layer: bits}."""
    out = {}
    for k, q in mixed_quantizers(model).items():
        i = q.chosen()
        if i is None:
            raise ValueError(f"{k}: the bit-width is not fixed yet (search_steps not reached)")
        model.get_submodule(k).weight_quantizer = q.quantizers[i]
        out[k] = q.candidates[i]
    return out


@torch.no_grad()
def sgd_logits(model, lr):
    """Move every precision logit by -lr x its gradient and clear the gradient (logit_optim: sgd)."""
    for q in mixed_quantizers(model).values():
        if q.logits.grad is not None:
            q.logits.sub_(lr * q.logits.grad)
            q.logits.grad = None


def tau_at(update, cfg):
    """The Gumbel-softmax temperature after `update` optimizer updates: tau[0] to tau[1], geometrically."""
    t0, t1 = cfg.tau
    frac = min(update / max(cfg.search_steps, 1), 1.0)
    return t0 * (t1 / t0) ** frac


def is_searching(model):
    return any(q.chosen() is None for q in mixed_quantizers(model).values())


def penalty(expected_bits, budget_bits, weight):
    """weight * (expected average bits - budget)+: the size penalty while searching (weight: size_weight,
    or the one raised by size_weight_lr that the training model keeps)."""
    return weight * F.relu(expected_bits - budget_bits)
