"""Precision search: budgets, the exact knapsack against brute force, Hutchinson against the exact
Hessian trace, and the sensitivities of a real (tiny) ESPnet Conformer."""
import copy
import os
import itertools
import random

import pytest
import torch

from mpq_plugins.espnet.groups import CONFORMER
from mpq_plugins.espnet.sensitivity import espnet_hessian_sensitivity, posteriors
from mpq_plugins.quant.allocation import (Budget, BudgetError, allocate, average_bits, fill_budget, knapsack,
                                          layer_costs)
from mpq_plugins.quant.config import QuantConfig, plan
from mpq_plugins.quant.sensitivity import hessian_sensitivity, hutchinson_traces, kl_sensitivity
from tests.fixtures import tiny_asr_model


def brute_force(costs, values, capacity):
    items = list(costs)
    best = None
    for pick in itertools.product(*[range(len(costs[i])) for i in items]):
        c = sum(costs[i][k] for i, k in zip(items, pick))
        if c > capacity:
            continue
        v = sum(values[i][k] for i, k in zip(items, pick))
        if best is None or v < best[0] - 1e-12:
            best = (v, c)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_knapsack_is_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 5)
    costs = {f"l{i}": sorted(rng.choice([2, 4, 6, 8, 12]) * rng.randint(1, 5) for _ in range(3)) for i in range(n)}
    values = {i: [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(3)] for i in costs}
    capacity = rng.randint(sum(min(c) for c in costs.values()), sum(max(c) for c in costs.values()))
    pick = knapsack(costs, values, capacity)
    cost = sum(costs[i][k] for i, k in pick.items())
    value = sum(values[i][k] for i, k in pick.items())
    assert cost <= capacity
    assert value == pytest.approx(brute_force(costs, values, capacity)[0])


@pytest.mark.parametrize("seed", range(10))
def test_fill_budget_spends_what_the_knapsack_left_and_stays_within_it(seed):
    rng = random.Random(seed)
    costs = {f"l{i}": [k * b for b in (2, 3, 4, 6, 8)] for i, k in enumerate(rng.sample(range(10, 60), 6))}
    probs = {i: [rng.random() for _ in range(5)] for i in costs}
    values = {i: [-__import__("math").log(p / sum(ps)) for p in ps] for i, ps in probs.items()}
    capacity = int(3.0 * sum(c[0] / 2 for c in costs.values()))
    pick = knapsack(costs, values, capacity)
    filled = fill_budget(costs, values, pick, capacity)
    used = sum(costs[i][k] for i, k in filled.items())
    assert sum(costs[i][k] for i, k in pick.items()) <= used <= capacity
    assert all(filled[i] >= pick[i] for i in pick)             # only upgrades
    for i, k in filled.items():                                 # no single move to a costlier option fits
        assert all(c - costs[i][k] <= 0 or used + c - costs[i][k] > capacity for c in costs[i])
    # a pick that already fills the budget is left alone
    full = {i: 1 for i in costs}
    assert fill_budget(costs, values, full, sum(c[1] for c in costs.values())) == full


def test_allocation_meets_the_budget_and_prefers_the_insensitive_layers():
    numels = {"big": 1000, "small": 100, "mid": 500}
    sens = {"big": {2: 1.0, 4: 0.1, 8: 0.0}, "small": {2: 50.0, 4: 5.0, 8: 0.0}, "mid": {2: 3.0, 4: 0.3, 8: 0.0}}
    bits = allocate(sens, numels, [2, 4, 8], Budget(avg_bits=3.0))
    assert average_bits(bits, numels) <= 3.0
    assert bits["small"] == 8 and bits["big"] == 2          # the sensitive small layer keeps its bits
    # a size budget counts ceil(n * b / 8) bytes per layer plus the fixed bytes
    fixed = 777
    bits = allocate(sens, numels, [2, 4, 8], Budget(size_mb=(fixed + 250 + 50 + 250) / 1e6), fixed_bytes=fixed)
    assert sum(-(-numels[n] * b // 8) for n, b in bits.items()) + fixed <= fixed + 550
    assert allocate(sens, numels, [2, 4, 8], Budget(avg_bits=8)) == {"big": 8, "small": 8, "mid": 8}


@pytest.mark.parametrize("conf,message", [
    ({"avg_bits": 1.5}, "below what the smallest candidates allow"),
    ({"avg_bits": 33}, "above 32 bits"),
    ({"size_mb": 1.0}, "above the size of the float32 model"),
    ({"size_mb": 1e-6}, "below what the smallest candidates allow"),
    ({"avg_bits": 3, "size_mb": 1}, "exactly one of"),
    ({"bits": 3}, "exactly one of"),
    ({"avg_bits": "3"}, "positive number"),
])
def test_bad_budgets(conf, message):
    with pytest.raises(BudgetError, match=message):
        layer_costs({"a": 1000}, [2, 4], Budget.from_dict(conf), fixed_bytes=100)


@pytest.mark.parametrize("cands,message", [([], "empty"), ([2, 9], "9 is not one of 1, 1.6"), ([1.5, 4], "1.5 is not one of")])
def test_bad_candidates(cands, message):
    with pytest.raises(BudgetError, match=message):
        allocate({"a": {}}, {"a": 10}, cands, Budget(avg_bits=4))


def test_hutchinson_matches_the_exact_hessian_trace():
    torch.manual_seed(0)
    x = torch.randn(32, 5)
    y = torch.randn(32, 3)
    w1 = torch.randn(4, 5, requires_grad=True)
    w2 = torch.randn(3, 4, requires_grad=True)

    def loss_of(a, b):
        return ((torch.tanh(x @ a.T) @ b.T - y) ** 2).mean()

    h1 = torch.autograd.functional.hessian(lambda a: loss_of(a, w2), w1).reshape(20, 20)
    h2 = torch.autograd.functional.hessian(lambda b: loss_of(w1, b), w2).reshape(12, 12)
    est = hutchinson_traces(lambda: loss_of(w1, w2), {"w1": w1, "w2": w2}, n_samples=300,
                            gen=torch.Generator().manual_seed(1))
    assert est["w1"] == pytest.approx(h1.trace().item(), rel=0.1)
    assert est["w2"] == pytest.approx(h2.trace().item(), rel=0.1)
    # a diagonal Hessian is exact from a single probe (v_i^2 = 1)
    d = torch.tensor([1.0, 2.0, 3.0])
    w = torch.zeros(3, requires_grad=True)
    one = hutchinson_traces(lambda: 0.5 * (d * w * w).sum(), {"w": w}, n_samples=1)
    assert one["w"] == pytest.approx(6.0)


def test_hessian_probes_are_fresh_for_every_batch_and_no_layer_gets_bits_for_free():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4))
    x = torch.randn(16, 6)
    seen = []
    real = torch.randint

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.clone())
        return out
    torch.randint = spy
    try:
        loss = lambda: (model(x) ** 2).mean()
        sens = hessian_sensitivity(model, [loss, loss], ["0", "1"], [2, 4], n_samples=1)
    finally:
        torch.randint = real
    assert len(seen) == 4 and not torch.equal(seen[0], seen[2])   # batch 2 draws new probes
    # a layer whose trace is negative (a concave loss in it) costs like the flattest positive layer, not nothing
    z = torch.randn(16, 5)
    out = hessian_sensitivity(model, [lambda: -10 * (model[0](x) ** 2).mean() + (model[1](z) ** 2).mean()],
                              ["0", "1"], [2, 4], n_samples=4)
    assert all(v > 0 for layer in out.values() for v in layer.values())


def tiny_batch():
    torch.manual_seed(3)
    speech = torch.randn(2, 8000) * 0.1
    return speech, torch.tensor([8000, 6400]), torch.randint(2, 10, (2, 5)), torch.tensor([5, 4])


@pytest.mark.parametrize("method", ["kl", "hessian"])
def test_sensitivities_of_a_conformer_grow_as_bits_shrink(method):
    model = tiny_asr_model()
    names = list(plan(model, QuantConfig(modules=[r"encoder\.encoders\.0\.feed_forward\.w_[12]", "ctc",
                                                  "decoder_output"]), CONFORMER))
    batch = [tiny_batch()]
    if method == "kl":
        s = kl_sensitivity(model, batch, names, [2, 4, 8], posteriors)
    else:
        s = espnet_hessian_sensitivity(model, batch, names, [2, 4, 8], n_samples=4)
    assert set(s) == set(names)
    total = {b: sum(s[n][b] for n in names) for b in (2, 4, 8)}
    assert total[2] > total[4] > total[8] >= 0
    assert all(s[n][b] >= 0 for n in names for b in (2, 4, 8))
    again = (kl_sensitivity(model, batch, names, [2, 4, 8], posteriors) if method == "kl"
             else espnet_hessian_sensitivity(model, batch, names, [2, 4, 8], n_samples=4))
    flat = lambda d: [d[n][b] for n in names for b in (2, 4, 8)]   # noqa: E731
    assert flat(again) == pytest.approx(flat(s))            # same seed, same data: same numbers
    copy.deepcopy(model)                                    # no autograd graph left in the model


def test_an_unmeetable_size_budget_fails_before_the_search():
    from mpq_plugins.espnet.sensitivity import sensitivity_search
    model = tiny_asr_model()
    qcfg = QuantConfig.from_dict({"mixed_precision": {"candidates": [2, 4, 8], "budget": {"size_mb": 0.01}}})
    with pytest.raises(BudgetError, match="below what the smallest candidates allow"):
        sensitivity_search("kl", model, {}, qcfg, "/no/such/data/dir")      # the data is never read


def test_a_two_stage_search_leaves_a_pinned_layer_at_its_bits_and_pays_for_it(tmp_path, monkeypatch):
    from mpq_plugins.espnet import sensitivity as sens_mod
    model = tiny_asr_model()
    monkeypatch.setattr(sens_mod, "held_out_batches", lambda conf, d, n: [tiny_batch()])
    seen = {}

    def spy(sens, nums, cands, budget, fixed, n_params):
        seen.setdefault("fixed", []).append(fixed)
        return allocate(sens, nums, cands, budget, fixed, n_params)
    monkeypatch.setattr(sens_mod, "allocate", spy)
    q = lambda bits: QuantConfig.from_dict({"modules": [r"encoder\.encoders\.0\.feed_forward\.w_[12]", "ctc"],  # noqa
                                            "bits": bits, "mixed_precision": {"candidates": [2, 4, 8], "n_utts": 2,
                                                                              "budget": {"avg_bits": 31.6}}})
    free, _ = sens_mod.sensitivity_search("kl", model, {}, q({}), str(tmp_path))
    bits, record = sens_mod.sensitivity_search("kl", model, {}, q({r"ctc\.ctc_lo": 8}), str(tmp_path))
    assert "ctc.ctc_lo" in free and "ctc.ctc_lo" not in bits and "ctc.ctc_lo" not in record["sensitivity"]
    assert set(bits) == set(free) - {"ctc.ctc_lo"}
    assert seen["fixed"][1] - seen["fixed"][0] == model.ctc.ctc_lo.weight.numel()    # 8 bits: a byte a weight


def test_sensitivities_are_computed_once_and_every_budget_pays_for_them(tmp_path, monkeypatch):
    import json
    from mpq_plugins.espnet import sensitivity as sens_mod
    from mpq_plugins.espnet.system import compression_time
    model = tiny_asr_model()
    model_file = tmp_path / "fp32.pth"
    torch.save(model.state_dict(), model_file)
    data = tmp_path / "dev"
    data.mkdir()
    for f in ("wav.scp", "text", "utt2spk"):
        (data / f).write_text("u1 x\n")
    monkeypatch.setattr(sens_mod, "held_out_batches", lambda conf, d, n: [tiny_batch()])
    cache = tmp_path / "sensitivities"
    mp = {"candidates": [1, 1.6, 2, 4, 8], "n_utts": 2}
    q = lambda bits: QuantConfig.from_dict({"modules": [r"encoder\.encoders\.0\.feed_forward\.w_[12]", "ctc"],  # noqa
                                            "mixed_precision": {**mp, "budget": {"avg_bits": bits}}})
    bits_a, rec_a = sens_mod.sensitivity_search("kl", model, {}, q(31.7), str(data), model_file=str(model_file),
                                                cache_dir=str(cache))
    assert rec_a["sensitivity_cache"]["computed_here"] is True and len(os.listdir(cache)) == 1
    monkeypatch.setattr(sens_mod, "kl_sensitivity", lambda *a, **k: pytest.fail("computed again"))
    bits_b, rec_b = sens_mod.sensitivity_search("kl", model, {}, q(31.6), str(data), model_file=str(model_file),
                                                cache_dir=str(cache))
    assert rec_b["sensitivity_cache"] == {"file": rec_a["sensitivity_cache"]["file"], "computed_here": False}
    assert rec_b["sensitivity"] == rec_a["sensitivity"] and 1.6 in next(iter(rec_b["sensitivity"].values()))
    assert rec_b["search_seconds"] == rec_a["search_seconds"]
    # a search of some of those layers (the CTC output pinned by a bits: entry) reads them too
    q_pinned = QuantConfig.from_dict({"modules": [r"encoder\.encoders\.0\.feed_forward\.w_[12]", "ctc"],
                                      "bits": {r"ctc\.ctc_lo": 8}, "mixed_precision": {**mp, "budget": {"avg_bits": 31.6}}})
    _, rec_p = sens_mod.sensitivity_search("kl", model, {}, q_pinned, str(data), model_file=str(model_file),
                                           cache_dir=str(cache))
    assert rec_p["sensitivity_cache"] == rec_b["sensitivity_cache"] and len(os.listdir(cache)) == 1
    assert rec_p["sensitivity"] == {n: v for n, v in rec_a["sensitivity"].items() if n != "ctc.ctc_lo"}
    assert rec_p["search_seconds"] == rec_a["search_seconds"]
    # another held-out set is another cache entry
    (data / "text").write_text("u1 y\n")
    computed = []
    monkeypatch.setattr(sens_mod, "kl_sensitivity", lambda *a, **k: computed.append(list(a[2])) or
                        {n: {b: 1.0 for b in mp["candidates"]} for n in a[2]})
    _, rec_s = sens_mod.sensitivity_search("kl", model, {}, q_pinned, str(data), model_file=str(model_file),
                                           cache_dir=str(cache))
    assert rec_s["sensitivity_cache"]["computed_here"] is True and len(os.listdir(cache)) == 2
    # more layers than the file holds: computed, and the file keeps the larger set for the next search
    _, rec_c = sens_mod.sensitivity_search("kl", model, {}, q(31.6), str(data), model_file=str(model_file),
                                           cache_dir=str(cache))
    assert rec_c["sensitivity_cache"]["computed_here"] is True and len(os.listdir(cache)) == 2
    _, rec_s2 = sens_mod.sensitivity_search("kl", model, {}, q_pinned, str(data), model_file=str(model_file),
                                            cache_dir=str(cache))
    assert rec_s2["sensitivity_cache"]["computed_here"] is False and len(computed) == 2
    assert "ctc.ctc_lo" in computed[1] and "ctc.ctc_lo" not in rec_s2["sensitivity"]
    # a system whose search read the cache is charged the search that computed it
    exp = tmp_path / "exp_b"
    exp.mkdir()
    (exp / "compression_time.json").write_text(json.dumps([{"what": "search", "wall_s": 2.0, "cpu_s": 2.0, "rc": 0},
                                                           {"what": "train", "wall_s": 100.0, "cpu_s": 190.0, "rc": 0}]))
    (exp / "search.json").write_text(json.dumps({"search_seconds": 50.0, "search_cpu_seconds": 90.0,
                                                 "sensitivity_cache": {"file": "x", "computed_here": False}}))
    t = compression_time(str(exp))
    assert t["search_s"] == 52.0 and t["total_s"] == 152.0 and t["cpu_s"] == 282.0 and t["train_cpu_s"] == 190.0
