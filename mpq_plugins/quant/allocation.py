"""Bit allocation for mixed-precision quantization: the budget, and the exact knapsack that turns
per-layer sensitivities (or learnt probabilities) into one bit-width per layer.

Budget (a `mixed_precision:` section's `budget`), always the whole packed file, every stored byte:
`avg_bits` (the file's bits per parameter of the model, = 32 / compression ratio), `ratio` (the
compression ratio over float32) or `size_mb` (the file in MB, 1e6 bytes). A layer at b bits costs
what the packed file stores for it (mpq_plugins.quant.packing.storage_bytes: ceil(n * b / 8) bytes,
ternary ceil(n / 5)); its steps, biases, every float tensor and the header cost the same whatever b
is, so they are paid first (the caller's `fixed_bytes`) and the weights share what is left.

The sensitivities themselves (KL, Hessian trace) need the model's loss and live with the ESPnet
adapter (mpq_plugins.espnet.sensitivity); a learnt allocation's values are -log p (mixed.py).

`knapsack` picks one candidate per layer minimising the summed sensitivity under the budget by
dynamic programming over integer costs (exact when the costs divided by their greatest common
divisor fit KNAPSACK_CELLS; beyond that, costs in coarser units rounded up, so never over budget).
"""
import dataclasses
import math
from functools import reduce

import numpy as np

from mpq_plugins.quant.numerics import check_bits, storage_bytes

KNAPSACK_CELLS = 100_000_000     # layers x capacity units of the dynamic programme


class BudgetError(ValueError):
    pass


@dataclasses.dataclass
class Budget:
    avg_bits: float = None
    ratio: float = None
    size_mb: float = None

    @classmethod
    def from_dict(cls, d, where="budget"):
        keys = {"avg_bits", "ratio", "size_mb"}
        if not isinstance(d, dict) or set(d) - keys or len(d) != 1:
            raise BudgetError(f"{where}: expected exactly one of avg_bits, ratio or size_mb, got {d!r}")
        b = cls(**d)
        key, v = next(iter(d.items()))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise BudgetError(f"{where}: {key} must be a positive number, got {v!r}")
        if b.avg_bits is not None and b.avg_bits > 32:
            raise BudgetError(f"{where}: avg_bits {b.avg_bits} is above 32 bits")
        if b.ratio is not None and b.ratio < 1:
            raise BudgetError(f"{where}: ratio {b.ratio} is below 1 (larger than the float32 model)")
        return b

    def file_bytes(self, n_params):
        """The packed file's bytes this budget allows for a model of n_params stored values."""
        if self.avg_bits is not None:
            return self.avg_bits * n_params / 8
        if self.ratio is not None:
            return 4 * n_params / self.ratio
        return self.size_mb * 1e6

    def text(self):
        if self.avg_bits is not None:
            return f"avg_bits {self.avg_bits:g} (stored bits a parameter, whole file)"
        if self.ratio is not None:
            return f"ratio {self.ratio:g}"
        return f"size_mb {self.size_mb:g}"


def check_candidates(candidates, where="candidates"):
    if not isinstance(candidates, (list, tuple)) or not candidates:
        raise BudgetError(f"{where}: the list of candidate bit-widths is empty")
    try:
        return sorted({check_bits(b, f"{where} entry") for b in candidates})
    except ValueError as e:
        raise BudgetError(f"{where}: {e}") from None


def layer_costs(numels, candidates, budget, fixed_bytes=0, n_params=None):
    """({layer: [bytes of each candidate]}, bytes the weights may take) for `budget`.
    fixed_bytes: what the file stores whatever the bit-widths; n_params: the model's stored values
    (avg_bits and ratio budgets are per parameter of the whole model; default: the weights alone)."""
    n_params = n_params if n_params is not None else sum(numels.values())
    costs = {n: [storage_bytes(k, b) for b in candidates] for n, k in numels.items()}
    total = budget.file_bytes(n_params)
    capacity = math.floor(total + 1e-6) - fixed_bytes
    what = f"{budget.text()}: {total / 1e6:.4f} MB, {fixed_bytes} bytes of it steps, float tensors and the header"
    if total > fixed_bytes + sum(4 * k for k in numels.values()):
        raise BudgetError(f"budget {what} is above the size of the float32 model: above 32 bits")
    least = sum(min(c) for c in costs.values())
    if least > capacity:
        raise BudgetError(f"budget {what} is below what the smallest candidates allow: {min(candidates)} bits "
                          f"everywhere stores {8 * (least + fixed_bytes) / n_params:.3f} bits a parameter")
    return costs, capacity


def knapsack(costs, values, capacity):
    """Exact multiple-choice knapsack: one option per item, total cost <= capacity, least total value.

    costs, values: {item: [per option]} (costs non-negative integers). Returns {item: option index}.
    """
    items = list(costs)
    unit = reduce(math.gcd, [c for i in items for c in costs[i]] + [0]) or 1
    if (capacity // unit) * len(items) > KNAPSACK_CELLS:   # coarser units, costs rounded up: within budget
        unit = math.ceil(capacity * len(items) / KNAPSACK_CELLS)
    costs = {i: [math.ceil(c / unit) * unit for c in costs[i]] for i in items}
    cap = capacity // unit
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


def allocate(sensitivity, numels, candidates, budget, fixed_bytes=0, n_params=None):
    """{layer: bits} minimising the summed sensitivity ({layer: {bits: value}}) within budget."""
    candidates = check_candidates(candidates)
    costs, capacity = layer_costs(numels, candidates, budget, fixed_bytes, n_params)
    values = {n: [float(sensitivity[n][b]) for b in candidates] for n in numels}
    pick = knapsack(costs, values, capacity)
    return {n: candidates[i] for n, i in pick.items()}


def average_bits(bits, numels):
    return sum(float(bits[n]) * numels[n] for n in numels) / sum(numels.values())
