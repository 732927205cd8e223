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
    """systems: [{"name", "bytes", "wer", "lossless" (True/False/None for the baselines), "float"}]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in systems:
        mb = s["bytes"] / 1e6
        if s["float"]:
            style = dict(marker="s", color="black")
        elif s["lossless"]:
            style = dict(marker="o", color="tab:green")
        else:
            style = dict(marker="x", color="tab:red")
        ax.plot(mb, s["wer"], linestyle="none", ms=7, **style)
    # labels: each one raised by whole lines until it overprints no label near it (systems of one size)
    lo, hi = ax.get_ylim()
    pt_per_wer = ax.get_window_extent().height * 72 / fig.dpi / (hi - lo)
    placed = []   # (log10 MB, label height in WER units)
    for s in sorted(systems, key=lambda s: (s["bytes"], s["wer"])):
        mb = s["bytes"] / 1e6
        k = 0
        while any(abs(x - math.log10(mb)) < 0.12 and abs(y - (s["wer"] + 9 * k / pt_per_wer)) < 9 / pt_per_wer
                  for x, y in placed):
            k += 1
        placed.append((math.log10(mb), s["wer"] + 9 * k / pt_per_wer))
        ax.annotate(s["name"], (mb, s["wer"]), textcoords="offset points", xytext=(5, 4 + 9 * k), fontsize=7,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="grey") if k else None)
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
    fig.savefig(path, dpi=80)
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
