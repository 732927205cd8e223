"""Precision search for mixed-precision quantization: the budget, layer sensitivities and the
exact knapsack that turns them into a bit-width per layer.

Budget (a `mixed_precision:` section's `budget`): `avg_bits` (average bits per quantized weight)
or `size_mb` (the packed file in MB, 1e6 bytes). A layer at b bits costs what the packed file
stores for it (mpq_plugins.quant.export): ceil(n * b / 8) bytes of levels; its steps and every
float tensor cost the same whatever b is, so they enter the size budget as fixed bytes.

Sensitivities, one value per layer and candidate bit-width (lower is safer):
- `kl_sensitivity`: KL divergence from the float model's output posteriors (CTC and the
  teacher-forced attention decoder) to those of the model with only that layer quantized.
- `hessian_sensitivity`: the layer's average Hessian trace, estimated matrix-free (Hutchinson:
  E[v^T H v] over Rademacher v, by Hessian-vector products), times ||Q_b(W) - W||^2 — the
  second-order estimate of the loss increase, (tr H / n) ||dW||^2 for an isotropic dW. The loss is
  the attention loss plus the KL of the CTC posteriors to the float model's: torch's CTC loss has
  no second derivative, and at the float point that KL's Hessian is the CTC posteriors' Fisher.

`knapsack` picks one candidate per layer minimising the summed sensitivity under the budget by
dynamic programming over integer costs (exact: costs are divided by their greatest common divisor).
"""
import dataclasses
import math
from functools import reduce

import numpy as np
import torch

from mpq_plugins.quant.numerics import check_bits, fake_quant, mse_step


class BudgetError(ValueError):
    pass


@dataclasses.dataclass
class Budget:
    avg_bits: float = None
    size_mb: float = None

    @classmethod
    def from_dict(cls, d, where="budget"):
        if not isinstance(d, dict) or set(d) - {"avg_bits", "size_mb"} or len(d) != 1:
            raise BudgetError(f"{where}: expected exactly one of avg_bits or size_mb, got {d!r}")
        b = cls(**d)
        v = b.avg_bits if b.avg_bits is not None else b.size_mb
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise BudgetError(f"{where}: {next(iter(d))} must be a positive number, got {v!r}")
        if b.avg_bits is not None and b.avg_bits > 32:
            raise BudgetError(f"{where}: avg_bits {b.avg_bits} is above 32 bits")
        return b


def check_candidates(candidates, where="candidates"):
    if not isinstance(candidates, (list, tuple)) or not candidates:
        raise BudgetError(f"{where}: the list of candidate bit-widths is empty")
    try:
        for b in candidates:
            check_bits(b, f"{where} entry")
    except ValueError as e:
        raise BudgetError(f"{where}: {e}") from None
    return sorted(set(candidates))


def layer_costs(numels, candidates, budget, fixed_bytes=0):
    """({layer: [cost of each candidate]}, capacity) in one integer unit for `budget`."""
    if budget.avg_bits is not None:
        costs = {n: [k * b for b in candidates] for n, k in numels.items()}
        capacity = math.floor(budget.avg_bits * sum(numels.values()) + 1e-9)
        what = f"avg_bits {budget.avg_bits}"
    else:
        costs = {n: [math.ceil(k * b / 8) for b in candidates] for n, k in numels.items()}
        capacity = math.floor(budget.size_mb * 1e6) - fixed_bytes
        what = f"size_mb {budget.size_mb} ({fixed_bytes} bytes of it are steps, float tensors and the header)"
        if budget.size_mb * 1e6 > fixed_bytes + sum(4 * k for k in numels.values()):
            raise BudgetError(f"budget {what} is above the size of the float32 model: above 32 bits")
    least = sum(min(c) for c in costs.values())
    if least > capacity:
        raise BudgetError(f"budget {what} is below what the smallest candidates allow "
                          f"({min(candidates)} bits everywhere needs {least} against {capacity})")
    return costs, capacity


def knapsack(costs, values, capacity):
    """Exact multiple-choice knapsack: one option per item, total cost <= capacity, least total value.

    costs, values: {item: [per option]} (costs non-negative integers). Returns {item: option index}.
    """
    items = list(costs)
    unit = reduce(math.gcd, [c for i in items for c in costs[i]] + [0]) or 1
    cap = capacity // unit
    if cap * len(items) > 400_000_000:
        raise BudgetError(f"knapsack too large ({len(items)} layers x {cap} cost units)")
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((len(items), cap + 1), dtype=np.int16)
    for li, item in enumerate(items):
        new = np.full(cap + 1, np.inf)
        for oi, (c, v) in enumerate(zip(costs[item], values[item])):
            c //= unit
            if c > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c:] = best[: cap + 1 - c] + v
            better = cand < new      # strict: among equal totals the earlier (cheaper) option stays
            new[better] = cand[better]
            choice[li][better] = oi
        best = new
    if not np.isfinite(best).any():
        raise BudgetError("no allocation fits the budget")
    c = int(np.argmin(best))          # least value; among ties the smallest cost
    out = {}
    for li in range(len(items) - 1, -1, -1):
        oi = int(choice[li][c])
        out[items[li]] = oi
        c -= costs[items[li]][oi] // unit
    return {i: out[i] for i in items}


def fill_budget(costs, values, pick, capacity):
    """Spend what a knapsack pick leaves of the capacity: repeatedly move one item to a costlier option
    that still fits, the move that adds the least value per unit of cost, until none fits. The
    likeliest allocation of a learnt search (values -log p) often sits below the budget; this
    meets the budget as closely as single moves allow. Returns a new {item: option index}."""
    pick = dict(pick)
    used = sum(costs[i][o] for i, o in pick.items())
    while True:
        best = None
        for i, o in pick.items():
            for j, c in enumerate(costs[i]):
                extra = c - costs[i][o]
                if extra > 0 and used + extra <= capacity:
                    rate = (values[i][j] - values[i][o]) / extra
                    if best is None or rate < best[0]:
                        best = (rate, i, j, extra)
        if best is None:
            return pick
        _, i, j, extra = best
        pick[i] = j
        used += extra


def allocate(sensitivity, numels, candidates, budget, fixed_bytes=0):
    """{layer: bits} minimising the summed sensitivity ({layer: {bits: value}}) within budget."""
    candidates = check_candidates(candidates)
    costs, capacity = layer_costs(numels, candidates, budget, fixed_bytes)
    values = {n: [float(sensitivity[n][b]) for b in candidates] for n in numels}
    pick = knapsack(costs, values, capacity)
    return {n: candidates[i] for n, i in pick.items()}


def average_bits(bits, numels):
    return sum(bits[n] * numels[n] for n in numels) / sum(numels.values())


# ---- sensitivities -------------------------------------------------------------------------------

def _modules(model, names):
    return {n: model.get_submodule(n) for n in names}


def posteriors(model, batch):
    """(CTC log-posteriors, attention-decoder log-posteriors under teacher forcing, their masks)."""
    from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
    from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos
    speech, speech_lengths, text, text_lengths = batch
    enc, enc_lens = model.encode(speech, speech_lengths)
    ctc = model.ctc.log_softmax(enc) if getattr(model, "ctc", None) is not None else None
    ctc_mask = ~make_pad_mask(enc_lens, maxlen=enc.size(1)).to(enc.device)
    att = att_mask = None
    if getattr(model, "decoder", None) is not None:
        ys_in, _ = add_sos_eos(text, model.sos, model.eos, model.ignore_id)
        dec, _ = model.decoder(enc, enc_lens, ys_in, text_lengths + 1)
        att = dec.log_softmax(-1)
        att_mask = ~make_pad_mask(text_lengths + 1, maxlen=ys_in.size(1)).to(enc.device)
    return ctc, ctc_mask, att, att_mask


def _kl(p_log, q_log, mask):
    """Mean over unmasked positions of KL(p || q), both given as log-probabilities."""
    kl = (p_log.exp() * (p_log - q_log)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def output_kl(teacher, student):
    """KL from the teacher's posteriors to the student's, CTC and decoder summed."""
    total = 0.0
    for (tp, tm), (sp, _) in (((teacher[0], teacher[1]), (student[0], student[1])),
                              ((teacher[2], teacher[3]), (student[2], student[3]))):
        if tp is not None:
            total = total + _kl(tp, sp, tm)
    return total


@torch.no_grad()
def kl_sensitivity(model, batches, names, candidates, progress=None):
    """{layer: {bits: KL}}: the float model's output KL when only that layer is quantized at bits
    (its MSE-optimal per-channel step)."""
    model.eval()
    teacher = [posteriors(model, b) for b in batches]
    out = {}
    for i, (name, mod) in enumerate(_modules(model, names).items()):
        w = mod.weight.data.clone()
        out[name] = {}
        for bits in candidates:
            mod.weight.data.copy_(fake_quant(w, mse_step(w, bits), bits))
            out[name][bits] = float(sum(output_kl(t, posteriors(model, b)) for t, b in zip(teacher, batches))
                                    / len(batches))
        mod.weight.data.copy_(w)
        if progress:
            progress(i + 1, len(names), name)
    return out


def hutchinson_traces(loss_fn, params, n_samples, seed=0):
    """{name: estimate of the trace of d2 loss / d param2} for each named parameter (its diagonal
    block of the Hessian), from n_samples Rademacher probes: E[v^T H v] = tr H."""
    gen = torch.Generator().manual_seed(seed)
    names = list(params)
    tensors = [params[n] for n in names]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, tensors, create_graph=True)
    traces = {n: 0.0 for n in names}
    for s in range(n_samples):
        vs = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t.dtype) for t in tensors]
        hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=s < n_samples - 1)
        for n, v, hv in zip(names, vs, hvs):
            traces[n] += float((v * hv).sum()) / n_samples
    return traces


def hessian_sensitivity(model, batches, names, candidates, n_samples=16, seed=0, ctc_weight=None):
    """{layer: {bits: (tr H / n) * ||Q_b(W) - W||^2}}, tr H by Hutchinson on the loss
    (1 - ctc_weight) * attention loss + ctc_weight * KL(float CTC posteriors || model's)."""
    model.eval()
    mods = _modules(model, names)
    if ctc_weight is None:
        ctc_weight = float(getattr(model, "ctc_weight", 0.5))
    with torch.no_grad():
        teacher = [posteriors(model, b) for b in batches]
    traces = {n: 0.0 for n in names}
    for t, b in zip(teacher, batches):
        def loss_fn(b=b, t=t):
            ctc, mask, att, att_mask = posteriors(model, b)
            loss = 0.0
            if ctc is not None and ctc_weight > 0:
                loss = loss + ctc_weight * _kl(t[0], ctc, mask)
            if att is not None and ctc_weight < 1:
                _, _, text, _ = b
                from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos
                _, ys_out = add_sos_eos(text, model.sos, model.eos, model.ignore_id)
                nll = -att.gather(-1, ys_out.clamp_min(0).unsqueeze(-1)).squeeze(-1)
                loss = loss + (1 - ctc_weight) * (nll * att_mask).sum() / att_mask.sum()
            return loss
        tr = hutchinson_traces(loss_fn, {n: m.weight for n, m in mods.items()}, n_samples, seed)
        for n in names:
            traces[n] += tr[n] / len(batches)
    for m in model.modules():   # ESPnet's attention keeps its last weights (for plots), here with their graph
        if isinstance(getattr(m, "attn", None), torch.Tensor):
            m.attn = m.attn.detach()
    out = {}
    for n, m in mods.items():
        w = m.weight.detach()
        avg_trace = max(traces[n], 0.0) / w.numel()
        out[n] = {b: avg_trace * float(((fake_quant(w, mse_step(w, b), b) - w) ** 2).sum()) for b in candidates}
    return out
