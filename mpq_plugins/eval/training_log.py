"""Read ESPnet's training log: one record per epoch with train/valid metrics and the wall-clock time;
summarise a training run (training_summary.json) and plot its learning curve (training_curve.png)."""
import datetime
import json
import os
import re

from mpq_plugins.eval import plots

_EPOCH = re.compile(r"^\[\S+\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \(trainer:\d+\) INFO: (\d+)epoch results: (.*)$")
_START = re.compile(r"^\[\S+\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \(trainer:\d+\) INFO: (\d+)/(\d+)epoch started")
_ROTATED = re.compile(r"^train\.log\.(\d+)$")   # run.sh's rotate_log: the logs of earlier runs


class TrainingLogError(Exception):
    pass


def _metrics(part):
    out = {}
    for k, v in re.findall(r"([A-Za-z_0-9.]+)=([-+0-9.eE]+)(?:,|$)", part):
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def read_epochs(*log_paths):
    """Return [{"epoch", "train": {...}, "valid": {...}, "end": datetime, "start": datetime}].

    Several logs (a run and its resumptions, oldest first) are read as one.
    """
    epochs, starts = [], {}
    for line in _lines(log_paths):
        m = _START.match(line)
        if m:
            starts[int(m.group(2))] = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            continue
        m = _EPOCH.match(line.rstrip("\n"))
        if not m:
            continue
        body = m.group(3)
        train = body.split("[valid]")[0]
        valid = body.split("[valid]")[1] if "[valid]" in body else ""
        ep = int(m.group(2))
        epochs.append({"epoch": ep, "train": _metrics(train), "valid": _metrics(valid),
                       "start": starts.get(ep),
                       "end": datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")})
    # a resumed run repeats epochs: keep the last record of each
    by_epoch = {e["epoch"]: e for e in epochs}
    return [by_epoch[k] for k in sorted(by_epoch)]


def _lines(paths):
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f


def training_seconds(epochs):
    """Wall-clock seconds spent in the logged epochs (sum over epochs, so resumes do not count gaps)."""
    return sum((e["end"] - e["start"]).total_seconds() for e in epochs if e["start"])


def run_logs(exp_dir):
    """The logs of a training run, oldest first: the logs of the runs it resumed (run.sh moves
    train.log to train.log.1, .2, ... before resuming), then train.log."""
    log = os.path.join(exp_dir, "train.log")
    if not os.path.exists(log):
        raise TrainingLogError(f"{log} does not exist")
    numbers = sorted(int(m.group(1)) for m in map(_ROTATED.match, os.listdir(exp_dir)) if m)
    return [f"{log}.{n}" for n in numbers] + [log]


def summarize(epochs):
    """epochs, best_epoch, best_valid_acc (the best validation accuracy), last_valid_acc and
    train_seconds (training_seconds) of a run's epochs."""
    best = max(epochs, key=lambda e: e["valid"].get("acc", -1))
    return {"epochs": len(epochs), "best_epoch": best["epoch"], "best_valid_acc": best["valid"].get("acc"),
            "last_valid_acc": epochs[-1]["valid"].get("acc"), "train_seconds": training_seconds(epochs)}


def plot_training(exp_dir):
    """Read the run's logs; write <exp_dir>/training_curve.png and <exp_dir>/training_summary.json;
    return the summary."""
    logs = run_logs(exp_dir)
    epochs = read_epochs(*logs)
    if not epochs:
        raise TrainingLogError(f"{logs[-1]} holds no finished epoch")
    plots.training_curve(epochs, os.path.basename(os.path.normpath(exp_dir)),
                         os.path.join(exp_dir, "training_curve.png"))
    summary = summarize(epochs)
    out = os.path.join(exp_dir, "training_summary.json")
    with open(out + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(out + ".tmp", out)
    return summary
