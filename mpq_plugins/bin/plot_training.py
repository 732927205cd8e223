"""Plot the learning curve of an ESPnet training run and summarise it.

    python -m mpq_plugins.bin.plot_training exp/asr_x

Reads <exp>/train.log and the logs of earlier, resumed runs (train.log.1, .2, ...); writes <exp>/training_curve.png and <exp>/training_summary.json
(epochs, best validation accuracy and its epoch, training wall-clock seconds).
"""
import argparse
import glob
import json
import os
import sys

from mpq_plugins.training_log import read_epochs, training_seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("expdir")
    a = p.parse_args(argv)
    log = os.path.join(a.expdir, "train.log")
    if not os.path.exists(log):
        sys.exit(f"plot_training: {log} does not exist")
    # run.sh moves the log of an earlier run to train.log.1, .2, ... before resuming
    n_rotated = len(glob.glob(log + ".[0-9]*"))
    epochs = read_epochs(*[f"{log}.{i}" for i in range(1, n_rotated + 1) if os.path.exists(f"{log}.{i}")], log)
    if not epochs:
        sys.exit(f"plot_training: {log} holds no finished epoch")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.suptitle(os.path.basename(os.path.normpath(a.expdir)))
    fig.tight_layout()
    fig.savefig(os.path.join(a.expdir, "training_curve.png"), dpi=80)
    best = max(epochs, key=lambda e: e["valid"].get("acc", -1))
    summary = {"epochs": len(epochs), "best_epoch": best["epoch"], "best_valid_acc": best["valid"].get("acc"),
               "last_valid_acc": epochs[-1]["valid"].get("acc"), "train_seconds": training_seconds(epochs)}
    with open(os.path.join(a.expdir, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"plot_training: {a.expdir}: {summary}")


if __name__ == "__main__":
    main()
