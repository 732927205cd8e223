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
           for i in range(3)] + [{"name": "f", "group": "float32", "bytes": 12e6, "wer": 7.9, "lo": 7.4, "hi": 8.4,
                                  "seeds": 1}]
    plots.pareto(pts, "p.png", "test", numbered=True)
    texts = [t.get_text() for t in figs[0].axes[0].texts]
    key = next(t for t in texts if "\n" in t).splitlines()
    assert key[0].split()[:2] == ["1", "s0"] and "8.00 [7.50, 8.50], 3 seeds" in key[0]
    assert key[3].split()[:2] == ["4", "f"] and key[3].endswith("1 seed)")
    numbers = [t for t in figs[0].axes[0].texts if t.get_text() in "123"]
    assert len({n.xyann for n in numbers}) == 3        # three at one size: side by side, not on top of each other
