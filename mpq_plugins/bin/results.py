"""Write a recipe's RESULTS.md (and its plots) from what the earlier stages left in exp/.

    python -m mpq_plugins.bin.results --baseline exp/asr_conf \\
        --systems "exp/asr_conf_w8 exp/asr_conf_w4 exp/asr_conf_fp32_cont" --main_set test --out RESULTS.md

Every system is compared with the float32 baseline on every test set by MAPSSWE (sc_stats; see
mpq_plugins/significance.py). A float system fine-tuned like the quantized ones (no quantization
section; conf/quant/fp32_cont.yaml) is a control row: on each test set the significance test uses
the better (lower-WER) of the float rows, so no method is credited with what extra epochs gave.
A system is lossless on a set when it is not significantly worse (two-tailed, p < 0.05).

RESULTS.md: one table over all systems (method, bits, size, ratio, WER per set, change against
the float reference, MAPSSWE p and verdict on --main_set, compression time), per test set the
significance details, per method the highest lossless compression ratio, then per system its
training summary and ESPnet-style sclite tables. Plots under results/ next to RESULTS.md.
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

import yaml

from mpq_plugins import plots
from mpq_plugins.confio import is_post_training
from mpq_plugins.scoring import ScoringError, parse_sum_avg
from mpq_plugins.significance import compare

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


def _json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


MPQ_NAMES = {"one_stage": "one-stage MPQ", "kl": "two-stage MPQ (KL)", "hessian": "two-stage MPQ (Hessian)",
             "supernet": "two-stage MPQ (supernet search)"}


def method_of(quant, is_baseline, mixed=None, ptq=False):
    """A short name of how the system was made, from its config's quantization section (and the
    quant conf that made it: two-stage systems train with fixed bits; max_epoch 0 is post-training)."""
    if not quant:
        return "float32" if is_baseline else "float32, fine-tuned (control)"
    if mixed and mixed.get("method") in MPQ_NAMES:
        return MPQ_NAMES[mixed["method"]]
    if quant.get("method"):
        return str(quant["method"])
    kind = "weights and activations" if quant.get("act_bits") else "weights"
    mixed = "mixed" if quant.get("bits") else "uniform"
    return f"{mixed} {'PTQ' if ptq else 'QAT'}, {kind}"


class System:
    """What the stages left for one experiment dir: packed sizes, scores, config, times."""

    def __init__(self, path, decode, is_baseline):
        self.path, self.name = path, os.path.basename(os.path.normpath(path))
        self.is_baseline = is_baseline
        self.size = _json(os.path.join(path, "packed.size.json"))
        if self.size is None:
            raise ScoringError(f"{path}/packed.size.json: missing (run the quantize stage, which packs every system)")
        conf = {}
        if os.path.exists(os.path.join(path, "config.yaml")):
            with open(os.path.join(path, "config.yaml")) as f:
                conf = yaml.safe_load(f) or {}
        self.quant = conf.get("quantization") or {}
        self.is_float = not self.quant
        made_by = os.path.join(path, "quant_conf.yaml")   # the quant conf, copied there by the quantize stage
        made = {}
        if os.path.exists(made_by):
            with open(made_by) as f:
                made = yaml.safe_load(f) or {}
        self.mixed = (made.get("quantization") or {}).get("mixed_precision")
        self.method = method_of(self.quant, is_baseline, self.mixed, is_post_training(made))
        self.decode_dirs = {}
        for res in sorted(glob.glob(os.path.join(path, decode, "*", "score_wer", "result.txt"))):
            self.decode_dirs[os.path.basename(os.path.dirname(os.path.dirname(res)))] = os.path.dirname(os.path.dirname(res))
        self.wer = {s: parse_sum_avg(os.path.join(d, "score_wer", "result.txt"))["Err"]
                    for s, d in self.decode_dirs.items()}
        self.missing = {s: (_json(os.path.join(d, "scoring.json"), {}) or {}).get("missing", 0)
                        for s, d in self.decode_dirs.items()}
        log = _json(os.path.join(path, "compression_time.json"), [])
        self.compress_wall = sum(e["wall_s"] for e in log) if log else None
        self.compress_cpu = sum(e["cpu_s"] for e in log) if log else None
        self.compress_parts = ({w: sum(e["wall_s"] for e in log if e["what"] == w) for w in ("search", "train", "pack")}
                               if log else None)
        self.summary = _json(os.path.join(path, "training_summary.json"))

    def sgml(self, test_set):
        return os.path.join(self.decode_dirs[test_set], "score_wer", "hyp.trn.sgml")


def reference_for(test_set, floats):
    """The float system with the lowest WER on test_set (the baseline and its fine-tuned control)."""
    have = [s for s in floats if test_set in s.wer]
    return min(have, key=lambda s: (s.wer[test_set], not s.is_baseline)) if have else None


def same_reference(a, b, test_set):
    ra = os.path.join(a.decode_dirs[test_set], "score_wer", "ref.trn")
    rb = os.path.join(b.decode_dirs[test_set], "score_wer", "ref.trn")
    with open(ra, "rb") as fa, open(rb, "rb") as fb:
        if fa.read() != fb.read():
            raise ScoringError(f"{ra} and {rb} differ: {a.name} and {b.name} were scored on different "
                               f"references for {test_set}; rescore both with the same data dir")


def significance(systems, sets):
    """{(system name, set): result dict} of every system against the float reference of each set."""
    floats = [s for s in systems if s.is_float]
    out = {}
    for test_set in sets:
        ref = reference_for(test_set, floats)
        if ref is None:
            raise ScoringError(f"no float32 system was decoded and scored on {test_set}: nothing to compare with")
        for s in systems:
            if s is ref or test_set not in s.wer:
                continue
            same_reference(s, ref, test_set)
            out[(s.name, test_set)] = compare(s.sgml(test_set), ref.sgml(test_set), s.name, ref.name,
                                              os.path.join(s.decode_dirs[test_set], "mapsswe"))
    return out


def fmt_p(p):
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def verdict_of(r):
    """The lossless verdict of one MAPSSWE result, as the tables print it."""
    return "yes (better)" if r["better"] else "yes" if r["lossless"] else "**no**"


def main_table(systems, sets, main_set, valid_set, sig, train_s):
    shown = [valid_set] if valid_set in sets and valid_set != main_set else []
    shown += [main_set] + [s for s in sets if s not in (main_set, valid_set)]
    floats = [s for s in systems if s.is_float]
    ref = reference_for(main_set, floats)
    head = ("|system|method|weight bits|size on disk (bytes)|ratio|" + "|".join(f"{d} WER" for d in shown)
            + f"|{main_set} change (abs / rel)|MAPSSWE p|lossless|compression time, wall (min)|"
            "over FP32 training|CPU (min)|")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in systems:
        bits = f"{s.size['avg_weight_bits']:.2f}" if not s.is_float else "32 (float)"
        wers = []
        for d in shown:
            cell = f"{s.wer[d]:.1f}" if d in s.wer else ""
            if s.missing.get(d):
                cell += f" ({s.missing[d]} missing hyps)"
            wers.append(cell)
        change = p = verdict = ""
        if main_set in s.wer and ref is not None and s is not ref:
            d = s.wer[main_set] - ref.wer[main_set]
            rel = 100 * d / ref.wer[main_set] if ref.wer[main_set] else float("nan")
            change = f"{d:+.1f} / {rel:+.1f}%"
            r = sig.get((s.name, main_set))
            if r:
                p, verdict = fmt_p(r["p"]), verdict_of(r)
        elif s is ref:
            change, verdict = "reference", "-"
        wall = f"{s.compress_wall / 60:.1f}" if s.compress_wall is not None else ""
        cpu = f"{s.compress_cpu / 60:.1f}" if s.compress_cpu is not None else ""
        over = f"{s.compress_wall / train_s:.2f}x" if (s.compress_wall is not None and train_s) else ""
        lines.append(f"|{s.name}|{s.method}|{bits}|{s.size['disk_bytes']:,}|{s.size['compression_ratio']:.2f}x|"
                     + "|".join(wers) + f"|{change}|{p}|{verdict}|{wall}|{over}|{cpu}|")
    return lines


def significance_table(sig, sets):
    lines = ["|test set|system|float reference|errors (reference / system)|segments|Z|p|verdict|tool|",
             "|---|---|---|---|---|---|---|---|---|"]
    for test_set in sets:
        for (name, d), r in sig.items():
            if d != test_set:
                continue
            v = ("significantly worse" if r["worse"] else "significantly better" if r["better"]
                 else "no significant difference")
            lines.append(f"|{d}|{name}|{r['baseline']}|{r['err_a']} / {r['err_b']}|{r['n_segments']}|"
                         f"{r['z']:.3f}|{fmt_p(r['p'])}|{v}|{r['tool']}|")
    return lines


def best_lossless(systems, main_set, sig):
    best = {}
    for s in systems:
        r = sig.get((s.name, main_set))
        if s.is_float or not r or not r["lossless"]:
            continue
        if s.method not in best or s.size["compression_ratio"] > best[s.method].size["compression_ratio"]:
            best[s.method] = s
    lines = ["|method|highest lossless ratio|system|weight bits|", "|---|---|---|---|"]
    for m, s in sorted(best.items()):
        lines.append(f"|{m}|{s.size['compression_ratio']:.2f}x|{s.name}|{s.size['avg_weight_bits']:.2f}|")
    if not best:
        lines.append(f"|(none)|no quantized system is lossless on {main_set}|||")
    return lines


def budget_of(s):
    """The budget of a mixed-precision system as text ('3 bits', '1.2 MB'); uniform systems: their bits."""
    if s.mixed:
        b = s.mixed.get("budget") or {}
        return f"{b['avg_bits']:g} bits" if "avg_bits" in b else f"{b.get('size_mb')} MB"
    if s.quant and not s.quant.get("bits") and s.quant.get("weight_bits"):
        return f"{s.quant['weight_bits']:g} bits"
    return None


def against_one_stage(one, s, main_set):
    """MAPSSWE of the one-stage system against another system of its budget on main_set, as text:
    one-stage's errors minus the other's, and p."""
    if one is None or s is one or main_set not in s.wer or main_set not in one.wer:
        return ""
    same_reference(one, s, main_set)
    r = compare(one.sgml(main_set), s.sgml(main_set), one.name, s.name,
                os.path.join(one.decode_dirs[main_set], "mapsswe_vs", s.name))
    return f"{int(r['err_b'] - r['err_a']):+d} errors, p {fmt_p(r['p'])}" + (" (**sig.**)" if r["significant"] else "")


def equal_budget(systems, main_set, valid_set, sig):
    """Per budget of the mixed-precision systems: each method (and the uniform system of that many
    bits) with its accuracy, the one-stage system tested against it (MAPSSWE), and its compression
    time split into search, fine-tuning and packing."""
    budgets = list(dict.fromkeys(budget_of(s) for s in systems if s.mixed))
    lines = []
    for b in budgets:
        rows = [s for s in systems if not s.is_float and budget_of(s) == b]
        one_stage = [s for s in rows if s.mixed and s.mixed.get("method") == "one_stage"]
        one = one_stage[0] if one_stage else None
        lines += [f"### Budget {b}", "",
                  f"|system|method|weight bits|size on disk (bytes)|ratio|{valid_set} WER|{main_set} WER|lossless|"
                  "search (min)|fine-tuning (min)|pack (min)|total (min)|time over one-stage|"
                  f"one-stage against it ({main_set})|",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in rows:
            r = sig.get((s.name, main_set))
            verdict = verdict_of(r) if r else ""
            wer = [f"{s.wer[d]:.1f}" if d in s.wer else "" for d in (valid_set, main_set)]
            t = s.compress_parts
            times = [f"{t[w] / 60:.1f}" for w in ("search", "train", "pack")] + [f"{s.compress_wall / 60:.1f}"] \
                if t else [""] * 4
            over = f"{s.compress_wall / one.compress_wall:.2f}x" if t and one and one.compress_wall else ""
            lines.append(f"|{s.name}|{s.method}|{s.size['avg_weight_bits']:.2f}|{s.size['disk_bytes']:,}|"
                         f"{s.size['compression_ratio']:.2f}x|{wer[0]}|{wer[1]}|{verdict}|" + "|".join(times) +
                         f"|{over}|{against_one_stage(one, s, main_set)}|")
        lines.append("")
        for other in one_stage[1:]:
            vs = [f"{s.name}: {against_one_stage(other, s, main_set)}"
                  + (f", time {other.compress_wall / s.compress_wall:.2f}x" if other.compress_wall and s.compress_wall
                     else "") for s in rows if s.method != other.method]
            if vs:
                lines += [f"{other.name} against the others ({main_set} errors difference, MAPSSWE p, its "
                          "compression time over theirs): " + "; ".join(vs) + ".", ""]
    return lines


def per_system(s, plot_dir):
    lines = [f"## {s.name}", ""]
    cfg = os.path.join(s.path, "config.yaml")
    if s.summary:
        t = s.summary
        lines += [f"- training: {t['epochs']} epochs in {t['train_seconds'] / 60:.1f} min, best validation "
                  f"accuracy {100 * t['best_valid_acc']:.1f}% at epoch {t['best_epoch']} "
                  f"(`{os.path.join(s.path, 'training_summary.json')}`, config `{cfg}`)"]
    curve = os.path.join(s.path, "training_curve.png")
    if os.path.exists(curve):
        dst = os.path.join(plot_dir, f"{s.name}_training_curve.png")
        shutil.copyfile(curve, dst)
        lines += ["", f"![training curve of {s.name}](results/{os.path.basename(dst)})"]
    lines += [""]
    for unit in ("WER", "CER"):
        rows = []
        for test_set, d in s.decode_dirs.items():
            rows.append((os.path.relpath(d, s.path), parse_sum_avg(os.path.join(d, f"score_{unit.lower()}", "result.txt"))))
        lines += [f"### {unit}", ""] + table(rows) + [""]
    return lines


def report(baseline, others, main_set, valid_set, out, decode):
    plot_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "results")
    os.makedirs(plot_dir, exist_ok=True)
    systems = [System(baseline, decode, True)] + [System(p, decode, False) for p in others]
    if not systems[0].is_float:
        raise ScoringError(f"{baseline}: the baseline has a quantization section; it must be the float32 system")
    sets = []
    for s in systems:
        sets += [d for d in s.decode_dirs if d not in sets]
    if main_set not in systems[0].wer:
        raise ScoringError(f"{baseline}: not scored on {main_set} (--main_set); scored on: {', '.join(sets) or 'nothing'}")
    sig = significance(systems, sets)
    train_s = (systems[0].summary or {}).get("train_seconds")
    cmd = (f"python -m mpq_plugins.bin.results --baseline {baseline} --systems \"{' '.join(others)}\" "
           f"--main_set {main_set} --valid_set {valid_set} --out {out}")
    lines = ["# mpq-asr results", "",
             f"Written by the report stage of run.sh (`{cmd}`); every number comes from files the earlier "
             "stages wrote: `packed.size.json` (sizes), `<decode>/<set>/score_wer/result.txt` (sclite), "
             "`<decode>/<set>/mapsswe/result.json` (sc_stats MAPSSWE), `compression_time.json`, "
             "`training_summary.json`.", "", "## Environment", ""] + environment() + [""]
    lines += ["## Systems", "",
              "Every system is decoded from its packed file (`packed.safetensors`: quantized weights bit-packed at "
              "their bit-widths, their steps, float tensors as they are). Ratio = bytes of the float32 model / bytes "
              "of the packed file on disk. Change and significance are against the float reference of the set: the "
              "better of the float32 baseline and its fine-tuned control. Lossless = not significantly worse "
              "(MAPSSWE, two-tailed, p < 0.05). Compression time: from the float checkpoint to the packed file, "
              "fine-tuning (and any search) included.", ""]
    lines += main_table(systems, sets, main_set, valid_set, sig, train_s) + [""]
    if train_s:
        lines += [f"FP32 training: {train_s / 60:.1f} min wall-clock ({systems[0].name}).", ""]
    lines += [f"![WER against size](results/wer_vs_size.png)", "",
              f"## Highest lossless compression ratio per method ({main_set})", ""]
    lines += best_lossless(systems, main_set, sig) + [""]
    mpq = equal_budget(systems, main_set, valid_set, sig)
    if mpq:
        lines += [f"## Mixed precision at equal budget ({main_set})", "",
                  "Each budget's systems side by side: the mixed-precision methods and the uniform system of as many "
                  "bits. Compression time split into the search of the bit-widths (two-stage methods; the one-stage "
                  "method searches inside its fine-tuning run), the fine-tuning and the packing.", ""] + mpq
    lines += ["## Significance (MAPSSWE) per test set", ""] + significance_table(sig, sets) + [""]
    points = []
    for s in systems:
        if main_set in s.wer:
            r = sig.get((s.name, main_set))
            points.append({"name": s.name.replace(systems[0].name, "").lstrip("_") or s.name, "bytes": s.size["disk_bytes"],
                           "wer": s.wer[main_set], "lossless": bool(r and r["lossless"]), "float": s.is_float})
    plots.wer_vs_size(points, os.path.join(plot_dir, "wer_vs_size.png"), main_set)
    mixed = [s for s in systems if len(set((s.size.get("bits_per_layer") or {}).values())) > 1]
    if mixed:
        lines += ["## Bit allocation of the mixed-precision systems", ""]
        for s in mixed:
            png = f"{s.name}_bits.png"
            plots.bit_allocation(s.name, s.size["bits_per_layer"], os.path.join(plot_dir, png))
            lines += [f"![bit allocation of {s.name}](results/{png})", ""]
    for s in systems:
        if s.decode_dirs:
            lines += per_system(s, plot_dir)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the float32 system's exp dir")
    p.add_argument("--systems", default="", help="the other systems' exp dirs (space-separated)")
    p.add_argument("--main_set", default="test", help="the test set of the lossless verdict")
    p.add_argument("--valid_set", default="dev")
    p.add_argument("--decode", default="decode_asr_packed", help="decode dir name inside each system")
    p.add_argument("--out", default="RESULTS.md")
    a = p.parse_args(argv)
    try:
        lines = report(a.baseline, a.systems.split(), a.main_set, a.valid_set, a.out, a.decode)
    except (ScoringError, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"results: {e}")
    print("\n".join(lines[: lines.index("## Significance (MAPSSWE) per test set")]))


if __name__ == "__main__":
    main()
