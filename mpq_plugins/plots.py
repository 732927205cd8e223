"""The report's plots: WER against model size (lossless frontier marked) and per-layer bit
allocation of mixed-precision systems. PNG files, small enough to commit next to RESULTS.md."""
import math
import os


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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


def wer_vs_size(systems, path, test_set):
    """systems: [{"name", "bytes", "wer", "lossless" (True/False/None for the baselines), "float"}].
    Points carry numbers (by size, then WER) and a key beside the axes names them: many systems share
    a size (every mixed-precision method of a budget), where names beside the points would overprint."""
    plt = _plt()
    order = sorted(systems, key=lambda s: (s["bytes"], s["wer"]))
    fig, ax = plt.subplots(figsize=(10, max(4.2, 0.16 * len(order) + 1.2)))
    placed = []   # (log10 MB, WER, number) of points already numbered
    for i, s in enumerate(order, 1):
        mb = s["bytes"] / 1e6
        if s["float"]:
            style = dict(marker="s", color="black")
        elif s["lossless"]:
            style = dict(marker="o", color="tab:green")
        else:
            style = dict(marker="x", color="tab:red")
        ax.plot(mb, s["wer"], linestyle="none", ms=7, **style)
        # numbers of points at (almost) the same place go side by side rather than on top of each other
        near = sum(1 for x, y, _ in placed if abs(x - math.log10(mb)) < 0.02 and abs(y - s["wer"]) < 0.15)
        placed.append((math.log10(mb), s["wer"], i))
        ax.annotate(str(i), (mb, s["wer"]), textcoords="offset points", xytext=(5 + 11 * near, 3), fontsize=7)
    key = "\n".join(f"{i:>2}  {s['name']}  ({s['wer']:.1f})" for i, s in enumerate(order, 1))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, fontsize=7, va="top", family="monospace")
    front = lossless_frontier([(s["bytes"] / 1e6, s["wer"], s["lossless"] or s["float"]) for s in systems])
    if front:
        ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="tab:green", alpha=0.5,
                label="lossless frontier")
    ax.plot([], [], "s", color="black", label="float32")
    ax.plot([], [], "o", color="tab:green", label="lossless (MAPSSWE, p >= 0.05 or better)")
    ax.plot([], [], "x", color="tab:red", label="significantly worse")
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (MB, log scale)")
    ax.set_ylabel(f"{test_set} WER (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def bit_allocation(name, bits_per_layer, path):
    """One bar per quantized layer (in model order), its height the layer's bit-width."""
    plt = _plt()
    names = list(bits_per_layer)
    bits = [bits_per_layer[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(names) + 2), 3.6))
    colors = {2: "tab:red", 3: "tab:orange", 4: "tab:olive", 5: "tab:cyan", 6: "tab:blue", 7: "tab:purple",
              8: "tab:green"}
    ax.bar(range(len(names)), bits, color=[colors.get(b, "gray") for b in bits])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("encoder.encoders.", "enc").replace("decoder.decoders.", "dec") for n in names],
                       rotation=90, fontsize=5)
    ax.set_ylabel("bits")
    ax.set_yticks(range(0, 9))
    ax.set_title(f"{name}: bit-width per layer")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
