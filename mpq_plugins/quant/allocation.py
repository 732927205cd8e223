"""Bit allocation for mixed-precision quantization: the budget, and the exact knapsack that turns
per-layer sensitivities (or learnt probabilities) into one bit-width per layer.

Budget (a `mixed_precision:` section's `budget`): `avg_bits` (average bits per quantized weight)
or `size_mb` (the packed file in MB, 1e6 bytes). A layer at b bits costs what the packed file
stores for it (mpq_plugins.quant.packing): ceil(n * b / 8) bytes of levels; its steps and every
float tensor cost the same whatever b is, so they enter the size budget as fixed bytes.

The sensitivities themselves (KL, Hessian trace) need the model's loss and live with the ESPnet
adapter (mpq_plugins.espnet.sensitivity); a learnt allocation's values are -log p (mixed.py).

`knapsack` picks one candidate per layer minimising the summed sensitivity under the budget by
dynamic programming over integer costs (exact: costs are divided by their greatest common divisor).
"""
import dataclasses
import math
from functools import reduce

import numpy as np

from mpq_plugins.quant.numerics import check_bits


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
