"""The report's plots: what a reader has to tell apart is told apart."""
from matplotlib.colors import to_hex

from mpq_plugins.eval import plots


def drawn(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, **k: figs.append(fig))
    return figs


def test_every_candidate_width_has_its_own_colour_and_a_key(monkeypatch):
    figs = drawn(monkeypatch)
    plots.bit_allocation("x", {"a": 1, "b": 1.6, "c": 2, "d": 8, "e": 1.6}, "x.png")
    ax = figs[0].axes[0]
    colours = [to_hex(p.get_facecolor()) for p in ax.patches]
    assert len(set(colours)) == 4 and colours[1] == colours[4] and to_hex("gray") not in colours
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["8 bits", "2 bits", "1.6 bits", "1 bits"]


def test_numbered_pareto_names_each_point_with_its_interval_in_the_key(monkeypatch):
    figs = drawn(monkeypatch)
    pts = [{"name": f"s{i}", "group": "g", "bytes": 1e6, "wer": 8.0 + i / 100, "lo": 7.5, "hi": 8.5, "seeds": 3}
           for i in range(3)] + [{"name": "f", "group": "float32", "bytes": 3e6, "wer": 7.9, "lo": 7.4, "hi": 8.4,
                                  "seeds": 1}]
    plots.pareto(pts, "p.png", "test", numbered=True)
    texts = [t.get_text() for t in figs[0].axes[0].texts]
    key = next(t for t in texts if "\n" in t).splitlines()
    assert key[0].split()[:2] == ["1", "s0"] and "8.00 [7.50, 8.50], 3 seeds" in key[0]
    assert key[3].split()[:2] == ["4", "f"] and key[3].endswith("1 seed)")
    numbers = [t for t in figs[0].axes[0].texts if t.get_text() in "123"]
    assert len({n.xyann for n in numbers}) == 3        # three at one size: side by side, not on top of each other


def test_the_wer_axis_turns_logarithmic_only_where_a_sweep_reaches_far_worse_systems(monkeypatch):
    figs = drawn(monkeypatch)
    near = [{"name": n, "group": g, "bytes": b, "wer": w, "lo": w - 0.4, "hi": w + 0.4, "seeds": 3}
            for n, g, b, w in (("f", "float32", 12e6, 7.9), ("w3", "uniform", 1.2e6, 8.5), ("kl", "kl", 1e6, 8.8))]
    far = near + [{"name": "w1", "group": "uniform", "bytes": 0.45e6, "wer": 46.0, "lo": 44.0, "hi": 48.0, "seeds": 3}]
    plots.pareto(near, "p.png", "test", numbered=True)
    plots.pareto(far, "p.png", "test", numbered=True)
    plots.wer_vs_size([{"name": p["name"], "bytes": p["bytes"], "wer": p["wer"], "lossless": False,
                        "float": p["group"] == "float32"} for p in far], "s.png", "test")
    axes = [f.axes[0] for f in figs]
    assert [a.get_yscale() for a in axes] == ["linear", "log", "log"]
    assert axes[1].get_ylabel().endswith("(log scale)") and not axes[0].get_ylabel().endswith("(log scale)")
    figs[1].canvas.draw()
    labels = [t.get_text() for t in axes[1].get_yticklabels() if t.get_visible() and t.get_text()]
    assert "10" in labels and "20" in labels and all("^" not in t for t in labels)   # plain numbers, not 10^1
    sizes = [t.get_text() for t in axes[1].get_xticklabels() if t.get_visible() and t.get_text()]
    assert "0.5" in sizes and "1" in sizes and all("^" not in t for t in sizes)      # MB, the size axis too


def test_a_float_model_far_larger_than_the_sweep_is_a_reference_line_and_the_size_axis_spans_the_sweep(monkeypatch):
    figs = drawn(monkeypatch)
    sweep = [{"name": n, "group": g, "bytes": b, "wer": w, "lo": w - 0.4, "hi": w + 0.4, "seeds": 3}
             for n, g, b, w in (("w1p6", "uniform", 0.82e6, 12.7), ("kl", "kl", 0.77e6, 10.2), ("w3", "uniform", 1.35e6, 8.5))]
    ref = [{"name": "fp32", "group": "float32", "bytes": 12.3e6, "wer": 7.6, "lo": 7.2, "hi": 8.0, "seeds": 1}]
    plots.pareto(sweep + ref, "p.png", "test", numbered=True)
    ax = figs[0].axes[0]
    key = next(t.get_text() for t in ax.texts if "\n" in t.get_text())
    assert "fp32" not in key and len(key.splitlines()) == 3                # numbered: the sweep alone
    lines = [l for l in ax.get_lines() if l.get_label().startswith("fp32")]
    assert len(lines) == 1 and set(lines[0].get_ydata()) == {7.6} and "12.3 MB" in lines[0].get_label()
    assert ax.get_xlim()[1] < 2 and ax.get_ylim()[0] < 7.2                  # the sweep's sizes; the float's band shown
    figs[0].canvas.draw()
    sizes = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    assert {"0.8", "1"} <= set(sizes)                                       # a tick every tenth of a decade
    plots.wer_vs_size([{"name": p["name"], "bytes": p["bytes"], "wer": p["wer"], "lossless": False,
                        "float": p["group"] == "float32"} for p in sweep + ref], "s.png", "test")
    ax = figs[1].axes[0]
    key = next(t.get_text() for t in ax.texts if "\n" in t.get_text())
    assert "fp32" not in key and any(l.get_label() == "fp32: 7.6, 12.3 MB" for l in ax.get_lines())
    assert ax.get_xlim()[1] < 2
