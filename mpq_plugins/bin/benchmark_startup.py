"""Benchmark of an ESPnet process's start: importing our ASR task with transformers visible and hidden.

    python -m mpq_plugins.bin.benchmark_startup --out results/benchmark_startup.md [--runs 10]

Each stage's entry point (training, decoding, packing, ...) starts by importing ESPnet's ASR task through
mpq_plugins.espnet.task. This times that import as a whole process (`python -c "import ..."`, path.sh's
environment), with MPQ_HIDE_TRANSFORMERS=1 (what run.sh sets for a run whose configs need no
transformers) and =0, in turn (one warm-up each, then --runs pairs), and writes each one's wall and CPU
seconds (min / median / max) and the median of the pairs' ratios. The CPU is recorded with them.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from mpq_plugins.datadir import write_atomic
from mpq_plugins.eval.report import environment

CODE = "import mpq_plugins.espnet.task"


def one_start(hide):
    env = dict(os.environ, MPQ_HIDE_TRANSFORMERS="1" if hide else "0")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE], env=env, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def spread(values):
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="markdown file (json beside it)")
    p.add_argument("--runs", type=int, default=10, help="counted pairs, after one warm-up of each")
    a = p.parse_args(argv)
    one_start(True), one_start(False)
    runs = {"hidden": [], "visible": []}
    for i in range(a.runs):
        for name in ("hidden", "visible") if i % 2 == 0 else ("visible", "hidden"):
            runs[name].append(one_start(name == "hidden"))
        print(f"pair {i + 1}/{a.runs}: hidden {runs['hidden'][-1][0]:.2f} s, visible {runs['visible'][-1][0]:.2f} s",
              file=sys.stderr)
    ratio = [h[0] / v[0] for h, v in zip(runs["hidden"], runs["visible"])]
    rows = [f"|transformers {name}|{spread([w for w, _ in r])}|{spread([c for _, c in r])}|" for name, r in runs.items()]
    lines = ["# Start-up of an ESPnet process", "",
             f"Written by `python -m mpq_plugins.bin.benchmark_startup --out {a.out} --runs {a.runs}`: `python -c "
             f"\"{CODE}\"` as a whole process, one warm-up each, then {a.runs} pairs in turn, nothing else asked of "
             "the machine by this run.", "", "## Environment", ""] + environment() + [
             "", "|import|wall s (min / median / max)|CPU s (min / median / max)|", "|---|---|---|"] + rows + [
             "", f"Wall time hidden / visible, median of the pairs: **{statistics.median(ratio):.2f}** "
             f"(min {min(ratio):.2f}, max {max(ratio):.2f}).", ""]
    write_atomic(a.out, "\n".join(lines))
    write_atomic(os.path.splitext(a.out)[0] + ".json",
                 json.dumps({"runs": runs, "ratio_hidden_over_visible": ratio}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
