"""The report's plots: WER against model size (lossless frontier marked), per-layer bit allocation
of mixed-precision systems, and the learning curve of a training run. PNG files, small enough to
commit next to RESULTS.md."""
import math
import os


def _plt():
    # Imported on first use, not at the top: matplotlib is slow to import and only drawing needs
    # it; the headless Agg backend has to be chosen before pyplot is imported.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, **kwargs):
    """Save a figure as PNG through a temporary file (never half a PNG), then close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", **kwargs)
    os.replace(tmp, path)
    _plt().close(fig)


def lossless_frontier(points):
    """points: [(size, wer, lossless)] -> the lossless points from which no lossless point is both
    smaller and at least as accurate, by size (ascending)."""
    ok = sorted((s, w) for s, w, lossless in points if lossless)
    front, best = [], float("inf")
    for s, w in ok:
        if w < best:
            front.append((s, w))
            best = w
    return front


def _number_points(ax, order, wer_format):
    """Number the points of order (dicts with "bytes", "wer", "name"; drawn already) 1, 2, ... and write a key
    beside the axes: numbers of points at (almost) the same place go side by side, not on top of each other."""
    placed = []   # (log10 MB, WER) of points already numbered
    for i, s in enumerate(order, 1):
        mb = s["bytes"] / 1e6
        near = sum(1 for x, y in placed if abs(x - math.log10(mb)) < 0.02 and abs(y - s["wer"]) < 0.15)
        placed.append((math.log10(mb), s["wer"]))
        ax.annotate(str(i), (mb, s["wer"]), textcoords="offset points", xytext=(5 + 11 * near, 3), fontsize=7)
    key = "\n".join(f"{i:>2}  {s['name']}  ({wer_format(s)})" for i, s in enumerate(order, 1))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, fontsize=7, va="top", family="monospace")


FAR_SIZE = 4.0   # float models this many times larger than every other system are drawn as reference lines


def _float_lines(ax, systems, is_float, wer_format):
    """Where every float model is over FAR_SIZE times larger than every other system (a sweep's systems from 0.6
    to 1.4 MB beside a float model of 12 MB would crowd into a corner), draw the float models as horizontal
    reference lines (an interval, where they have one, shaded), named in the legend, and return the other
    systems, to be drawn as points on a size axis of their own; else return systems as they are."""
    floats = [s for s in systems if is_float(s)]
    rest = [s for s in systems if not is_float(s)]
    if not floats or not rest or min(s["bytes"] for s in floats) <= FAR_SIZE * max(s["bytes"] for s in rest):
        return systems
    for s, style in zip(floats, ("--", ":", "-.")):
        ax.axhline(s["wer"], color="black", ls=style, lw=1,
                   label=f"{s['name']}: {wer_format(s)}, {s['bytes'] / 1e6:.1f} MB")
        if "lo" in s:
            ax.axhspan(s["lo"], s["hi"], color="grey", alpha=0.08)
    return rest


def wer_vs_size(systems, path, test_set):
    """systems: [{"name", "bytes", "wer", "lossless" (True/False/None for the baselines), "float"}];
    lossless: on every test set and decode. Points carry numbers (by size, then WER) and a key beside the
    axes names them: many systems share a size (every mixed-precision method of a budget), where names
    beside the points would overprint. Float models far larger than the rest: reference lines (_float_lines)."""
    plt = _plt()
    order = sorted(systems, key=lambda s: (s["bytes"], s["wer"]))
    fig, ax = plt.subplots(figsize=(10, max(4.2, 0.16 * len(order) + 1.2)))
    order = _float_lines(ax, order, lambda s: s["float"], lambda s: f"{s['wer']:.1f}")
    for s in order:
        if s["float"]:
            style = dict(marker="s", color="black")
        elif s["lossless"]:
            style = dict(marker="o", color="tab:green")
        else:
            style = dict(marker="x", color="tab:red")
        ax.plot(s["bytes"] / 1e6, s["wer"], linestyle="none", ms=7, **style)
    _number_points(ax, order, lambda s: f"{s['wer']:.1f}")
    front = lossless_frontier([(s["bytes"] / 1e6, s["wer"], s["lossless"] or s["float"]) for s in order])
    if front:
        ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="tab:green", alpha=0.5,
                label="lossless frontier")
    if any(s["float"] for s in order):
        ax.plot([], [], "s", color="black", label="float32")
    ax.plot([], [], "o", color="tab:green", label="lossless on every test set and decode (MAPSSWE)")
    ax.plot([], [], "x", color="tab:red", label="significantly worse on some test set or decode")
    _finish_size_axes(fig, ax, path, "size on disk (MB, log scale)", f"{test_set} WER (%)", [s["wer"] for s in systems])


WIDE_WER = 3.0   # the WER axis turns logarithmic where its highest value is over this many times its lowest


def _finish_size_axes(fig, ax, path, xlabel, ylabel, wers):
    """wers: the lowest and highest WER drawn (bars included). A sweep down to 1 bit puts systems near 50% WER
    beside the float model's 8%: on a linear axis the differences between methods near the float model, the
    ones a reader looks for, would shrink to a sliver, so such an axis is logarithmic, its ticks plain numbers
    (as the size axis's: 0.5, 1, 2, 5, 10 MB, not 10^0)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    x0, x1 = ax.get_xlim()   # less than a decade (the quantized systems of a sweep alone): a tick at every tenth
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if x1 > 5 * x0 else tuple(range(1, 10))))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    lo, hi = min(wers), max(wers)
    if lo > 0 and hi / lo > WIDE_WER:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, dpi=80, bbox_inches="tight")


def pareto(points, path, test_set, lines=True, numbered=False):
    """points: [{"name", "group" (a method), "bytes", "wer", "lo", "hi", "seeds"}]: WER against size with
    interval bars, one colour per group; lines: each group's systems joined in size order, else markers
    alone, the systems of equal size in different groups (e.g. a nested system and its twin) joined by a
    dotted line; numbered: points numbered and named in a key beside the axes (many at one size), else
    named beside the points. Float models over FAR_SIZE times larger than every other system are reference
    lines (their intervals shaded), named in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, max(5.5, 0.16 * len(points) + 1.2)) if numbered else (9, 5.5))
    drawn = points   # every point's interval sets the WER axis
    points = _float_lines(ax, points, lambda p: p["group"] == "float32",
                          lambda p: f"{p['wer']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}]")
    groups = list(dict.fromkeys(p["group"] for p in points))
    colours = plt.get_cmap("tab10")
    if not lines:
        by_size = {}
        for p in points:
            by_size.setdefault(p["bytes"], []).append(p["wer"])
        for size, wers in by_size.items():
            if len(wers) > 1:
                ax.plot([size / 1e6] * 2, [min(wers), max(wers)], ":", color="grey", lw=0.8)
    for i, g in enumerate(groups):
        pts = sorted((p for p in points if p["group"] == g), key=lambda p: p["bytes"])
        x = [p["bytes"] / 1e6 for p in pts]
        y = [p["wer"] for p in pts]
        err = [[p["wer"] - p["lo"] for p in pts], [p["hi"] - p["wer"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="s" if g == "float32" else "o", ms=5, capsize=3, lw=1 if lines else 0,
                    elinewidth=1, color="black" if g == "float32" else colours(i % 10), label=g)
        if not numbered:
            for p in pts:
                ax.annotate(p["name"], (p["bytes"] / 1e6, p["wer"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=6)
    if numbered:
        _number_points(ax, sorted(points, key=lambda p: (p["bytes"], p["wer"])),
                       lambda p: f"{p['wer']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}], {p['seeds']} seed"
                                 + ("s" if p["seeds"] != 1 else ""))
    _finish_size_axes(fig, ax, path, "size on disk (MB, log scale; mean over seeds)",
                      f"{test_set} WER (%), 95% bootstrap interval", [p["lo"] for p in drawn] + [p["hi"] for p in drawn])


def bit_allocation(name, bits_per_layer, path):
    """One bar per quantized layer (in model order), its height the layer's bit-width."""
    plt = _plt()
    names = list(bits_per_layer)
    bits = [bits_per_layer[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(names) + 2), 3.6))
    colors = {1: "tab:brown", 1.6: "tab:pink", 2: "tab:red", 3: "tab:orange", 4: "tab:olive", 5: "tab:cyan",
              6: "tab:blue", 7: "tab:purple", 8: "tab:green"}
    ax.bar(range(len(names)), bits, color=[colors.get(b, "gray") for b in bits])
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=colors.get(b, "gray"), label=f"{b:g} bits") for b in sorted(set(bits), reverse=True)],
              fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))   # the widths used, widest first
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("encoder.encoders.", "enc").replace("decoder.decoders.", "dec") for n in names],
                       rotation=90, fontsize=5)
    ax.set_ylabel("bits")
    ax.set_yticks(range(0, 9))
    ax.set_title(f"{name}: bit-width per layer")
    fig.tight_layout()
    _save(fig, path, dpi=80)


def training_curve(epochs, title, path):
    """Token accuracy and loss per epoch, train and valid (epochs: training_log.read_epochs)."""
    plt = _plt()
    x = [e["epoch"] for e in epochs]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for split, style in (("train", "--"), ("valid", "-")):
        ax[0].plot(x, [e[split].get("acc", float("nan")) * 100 for e in epochs], style, marker="o", ms=3, label=split)
        ax[1].plot(x, [e[split].get("loss", float("nan")) for e in epochs], style, marker="o", ms=3, label=split)
    ax[0].set_ylabel("token accuracy (%)")
    ax[1].set_ylabel("loss")
    for axis in ax:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, dpi=80)
