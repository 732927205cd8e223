"""Write a recipe's RESULTS.md from what the earlier stages left in exp/.

    python -m mpq_plugins.bin.results --expdir exp --out RESULTS.md

First a table of every system (exp/asr_*/ with a packed model and scored decodes): average bits
of its quantized weights, size of its packed file on disk, compression ratio against float32, WER
per test set and compression time. Then, per system: the training summary and curve, and
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


def compression_time(asr_exp):
    path = os.path.join(asr_exp, "compression_time.json")
    if not os.path.exists(path):
        return "", ""
    with open(path) as f:
        log = json.load(f)
    wall = sum(e["wall_s"] for e in log)
    cpu = sum(e["cpu_s"] for e in log)
    return f"{wall / 60:.1f}", f"{cpu / 60:.1f}"


def systems_table(exps):
    """One row per system with a packed file: bits, bytes, ratio, WER per test set, compression time."""
    rows = []
    sets = []
    for asr_exp in exps:
        size = os.path.join(asr_exp, "packed.size.json")
        if not os.path.exists(size):
            continue
        with open(size) as f:
            r = json.load(f)
        wer = {}
        for res in sorted(glob.glob(os.path.join(asr_exp, "decode_*_packed", "*", "score_wer", "result.txt"))):
            d = os.path.basename(os.path.dirname(os.path.dirname(res)))
            wer[d] = parse_sum_avg(res)["Err"]
            if d not in sets:
                sets.append(d)
        rows.append((os.path.basename(asr_exp), r, wer, compression_time(asr_exp)))
    if not rows:
        return []
    lines = ["## Systems", "",
             "Every system is decoded from its packed file (`packed.safetensors`: quantized weights bit-packed at "
             "their bit-widths, their steps, float tensors as they are; `packed.size.json` has the byte counts). "
             "Ratio = bytes of the float32 model / bytes of the packed file on disk. Compression time: from the "
             "float checkpoint to the packed file (`compression_time.json`: QAT fine-tuning and packing).", "",
             "|system|weight bits|quantized params|size on disk (bytes)|ratio|" + "|".join(f"{d} WER" for d in sets)
             + "|compression time, wall (min)|CPU (min)|",
             "|---|---|---|---|---|" + "|".join("---" for _ in sets) + "|---|---|"]
    for name, r, wer, (wall, cpu) in rows:
        bits = f"{r['avg_weight_bits']:.2f}" if r["quantized_fraction"] > 0 else "32 (float)"
        lines.append(f"|{name}|{bits}|{100 * r['quantized_fraction']:.1f}%|{r['disk_bytes']:,}|"
                     f"{r['compression_ratio']:.2f}x|" + "|".join(f"{wer[d]:.1f}" if d in wer else "" for d in sets)
                     + f"|{wall}|{cpu}|")
    return lines + [""]


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
    exps = sorted(glob.glob(os.path.join(a.expdir, "asr_*")))
    try:
        lines += systems_table(exps)
    except (ScoringError, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"results: {e}")
    for asr_exp in exps:
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
