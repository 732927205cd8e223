"""Write a recipe's RESULTS.md from what the earlier stages left in exp/.

    python -m mpq_plugins.bin.results --expdir exp --out RESULTS.md

For every exp/asr_*/ with scored decodes: the environment, the training summary and curve, and
ESPnet-style sclite tables (WER and CER) per decode dir. Plots are copied next to RESULTS.md under
results/ so that they can be committed with it.
"""
import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from mpq_plugins.scoring import ScoringError, parse_sum_avg

COLS = ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]


def environment():
    import espnet
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "unknown"
    return [f"- date: `{time.strftime('%Y-%m-%d %H:%M:%S %Z')}`",
            f"- python: `{platform.python_version()}`, espnet `{espnet.__version__}`, torch `{torch.__version__}`",
            f"- machine: `{platform.machine()}`, {os.cpu_count()} CPU cores, mpq-asr commit `{commit}`"]


def table(rows):
    lines = ["|dataset|" + "|".join(COLS) + "|", "|---|" + "|".join("---" for _ in COLS) + "|"]
    for name, r in rows:
        lines.append(f"|{name}|" + "|".join(str(r[c]) if c in ("Snt", "Wrd") else f"{r[c]:.1f}" for c in COLS) + "|")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expdir", default="exp")
    p.add_argument("--out", default="RESULTS.md")
    p.add_argument("--title", default="mpq-asr results")
    a = p.parse_args(argv)
    plot_dir = os.path.join(os.path.dirname(os.path.abspath(a.out)), "results")
    lines = [f"# {a.title}", "", "Written by the score stage of run.sh "
             f"(`python -m mpq_plugins.bin.results --expdir {a.expdir} --out {a.out}`); every number comes "
             "from the files named beside it.", "", "## Environment", ""] + environment() + [""]
    found = False
    for asr_exp in sorted(glob.glob(os.path.join(a.expdir, "asr_*"))):
        results = sorted(glob.glob(os.path.join(asr_exp, "decode_*", "*", "score_wer", "result.txt")))
        if not results:
            continue
        found = True
        name = os.path.basename(asr_exp)
        lines += [f"## {name}", ""]
        cfg = os.path.join(asr_exp, "config.yaml")
        summ = os.path.join(asr_exp, "training_summary.json")
        if os.path.exists(summ):
            with open(summ) as f:
                s = json.load(f)
            lines += [f"- training: {s['epochs']} epochs in {s['train_seconds'] / 60:.1f} min, best validation "
                      f"accuracy {100 * s['best_valid_acc']:.1f}% at epoch {s['best_epoch']} "
                      f"(`{summ}`, config `{cfg}`)"]
        curve = os.path.join(asr_exp, "training_curve.png")
        if os.path.exists(curve):
            os.makedirs(plot_dir, exist_ok=True)
            dst = os.path.join(plot_dir, f"{name}_training_curve.png")
            shutil.copyfile(curve, dst)
            lines += ["", f"![training curve of {name}](results/{os.path.basename(dst)})"]
        lines += [""]
        for unit in ("WER", "CER"):
            rows = []
            for r in results:
                decode_set = os.path.relpath(os.path.dirname(os.path.dirname(r)), asr_exp)
                path = r.replace("score_wer", f"score_{unit.lower()}")
                try:
                    rows.append((decode_set, parse_sum_avg(path)))
                except (ScoringError, FileNotFoundError) as e:
                    sys.exit(f"results: {e}")
            lines += [f"### {unit}", ""] + table(rows) + [""]
    if not found:
        sys.exit(f"results: no scored decodes under {a.expdir}/asr_*/decode_*/*/score_wer/ (run the score stage)")
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, a.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
