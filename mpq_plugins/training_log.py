"""Read ESPnet's training log: one record per epoch with train/valid metrics and the wall-clock time."""
import datetime
import re

_EPOCH = re.compile(r"^\[\S+\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \(trainer:\d+\) INFO: (\d+)epoch results: (.*)$")
_START = re.compile(r"^\[\S+\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \(trainer:\d+\) INFO: (\d+)/(\d+)epoch started")


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
