"""Write a recipe's RESULTS.md (and its plots) from what the earlier stages left in exp/.

What each system is comes from its record, exp/<system>/system.yaml (mpq_plugins/record.py,
written by the quantize stage); its accuracy from the score files of each decoded set:
<decode>/<set>/score_wer/result.txt, hyp.trn.sgml and ref.trn (sclite), scoring.json (hypotheses
missing). A training_curve.png beside system.yaml is copied next to RESULTS.md.

Every system is compared with the float32 baseline on every test set by MAPSSWE (sc_stats; see
significance.py). A float system fine-tuned like the quantized ones (method float_control) is a
control row: on each test set the significance test uses the better (lower-WER) of the float rows,
so no method is credited with what extra epochs gave. A system is lossless on a set when it is not
significantly worse (two-tailed, p < 0.05).

RESULTS.md: one table over all systems (method, bits, size, ratio, WER per set, change against
the float reference, MAPSSWE p and verdict on the main set, compression time), per test set the
significance details, per method the highest lossless compression ratio, then per system its
training summary and ESPnet-style sclite tables. Plots under results/ next to RESULTS.md.
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import time

from mpq_plugins.datadir import write_atomic
from mpq_plugins.eval import plots
from mpq_plugins.eval.scoring import parse_sum_avg
from mpq_plugins.eval.sctk import ScoringError
from mpq_plugins.eval.significance import (bootstrap_errors, bootstrap_wer, cached_on_files, check_same_reference,
                                          compare, utterance_errors)
from mpq_plugins.record import MIXED, read_json, read_system

COLS = ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
AIO = ("all_in_one", "all_in_one_twin")   # nested systems and their twins


def environment():
    # espnet and torch are imported only here, for their versions: the report itself needs neither
    # (importing espnet takes seconds).
    import espnet
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "unknown"
    return [f"- date: `{time.strftime('%Y-%m-%d %H:%M:%S %Z')}`",
            f"- python: `{platform.python_version()}`, espnet `{espnet.__version__}`, torch `{torch.__version__}`",
            f"- machine: `{platform.machine()}`, {os.cpu_count()} CPU cores ({cpu()}), mpq-asr commit `{commit}`"]


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")   # what int8 speed depends on


def cpu():
    """The CPU's model name and its int8-relevant instruction sets, from /proc/cpuinfo (as lscpu shows them)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "model unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "model unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return f"{model}; {', '.join(f for f in SIMD_FLAGS if f in flags) or 'no AVX2'}"


def table(rows):
    lines = ["|dataset|" + "|".join(COLS) + "|", "|---|" + "|".join("---" for _ in COLS) + "|"]
    for name, r in rows:
        lines.append(f"|{name}|" + "|".join(str(r[c]) if c in ("Snt", "Wrd") else f"{r[c]:.1f}" for c in COLS) + "|")
    return lines



def decode_label(decode):
    """decode_acoustic_packed -> acoustic"""
    name = decode[len("decode_"):] if decode.startswith("decode_") else decode
    return name[: -len("_packed")] if name.endswith("_packed") else name


def set_label(test_set, decode, first):
    """A test set under the first (main) decode is its name; under another, its name and the decode's."""
    return test_set if decode == first else f"{test_set} ({decode_label(decode)})"


def is_valid(label, valid_set):
    return label == valid_set or label.startswith(valid_set + " (")


def lossless_everywhere(s, sig, valid_set):
    """(verdict, the sets it fails on): lossless only if not significantly worse on every test set under
    every decode (the held-out set excepted); None when it was tested on none."""
    rs = {label: r for (name, label), r in sig.items() if name == s.name and not is_valid(label, valid_set)}
    if not rs:
        return None, []
    failed = [label for label, r in rs.items() if not r["lossless"]]
    return not failed, failed


class System:
    """One experiment dir as the report sees it: its record (system.yaml) and its scores."""

    def __init__(self, path, decodes, is_baseline):
        self.path, self.name = path, os.path.basename(os.path.normpath(path))
        self.is_baseline = is_baseline
        rec = read_system(path)
        self.kind = rec["method"]                 # float, qat, kl, ... (record.METHODS)
        self.method = rec["description"]          # the report's "method" column
        self.is_float = rec["is_float"]
        self.mixed = self.kind in MIXED
        if self.mixed and ((rec.get("conf") or {}).get("quantization") or {}).get("bits"):
            self.method += ", layers pinned"      # bits: entries keep some layers out of the search: its own line
        self.budget = rec["budget"]
        self.weight_bits = rec["weight_bits"]
        self.bits_per_layer = rec["bits_per_layer"]
        self.sizes = rec["sizes"]
        t = rec["compression_time"]
        self.compress_wall = t["total_s"] if t else None
        self.compress_cpu = t["cpu_s"] if t else None
        self.compress_parts = {w: t[f"{w}_s"] for w in ("search", "train", "pack")} if t else None
        self.train_cpu = t.get("train_cpu_s") if t else None      # records before 2026-12-06 have none
        self.training = rec["training"]
        self.seed = rec["seed"]
        self.quant_conf = rec["quant_conf"]
        self.twin = rec.get("twin")               # a nested system's twin (record.py)
        self.decode_dirs = {}   # {set label: decode dir}: "test" under the first decode, "test (acoustic)" ...
        for decode in decodes:
            for res in sorted(glob.glob(os.path.join(path, decode, "*", "score_wer", "result.txt"))):
                d = os.path.dirname(os.path.dirname(res))
                self.decode_dirs[set_label(os.path.basename(d), decode, decodes[0])] = d
        self.wer = {s: parse_sum_avg(os.path.join(d, "score_wer", "result.txt"))["Err"]
                    for s, d in self.decode_dirs.items()}
        self.missing = {s: (read_json(os.path.join(d, "scoring.json"), {}) or {}).get("missing", 0)
                        for s, d in self.decode_dirs.items()}

    def sgml(self, test_set):
        return os.path.join(self.decode_dirs[test_set], "score_wer", "hyp.trn.sgml")


def reference_for(test_set, floats):
    """The float system with the lowest WER on test_set: the baseline or its fine-tuned control (its first
    seed: the best of several control seeds would be a reference chosen for its luck; the other seeds are
    compared with it like any system)."""
    have = [s for s in floats if test_set in s.wer and (s.is_baseline or family_of(s.name) == s.name)]
    return min(have, key=lambda s: (s.wer[test_set], not s.is_baseline)) if have else None


def same_reference(a, b, test_set):
    check_same_reference(os.path.join(a.decode_dirs[test_set], "score_wer"),
                         os.path.join(b.decode_dirs[test_set], "score_wer"), a.name, b.name, test_set)


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
            + f"|{main_set} change (abs / rel)|MAPSSWE p|lossless on {main_set}|lossless on every test set and "
            "decode|compression time, wall (min)|"
            "over FP32 training|CPU (min)|")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in systems:
        bits = f"{s.weight_bits:.2f}" if not s.is_float else "32 (float)"
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
        everywhere, failed = lossless_everywhere(s, sig, valid_set)
        overall = "" if everywhere is None else "yes" if everywhere else "**no** (" + ", ".join(failed) + ")"
        wall = f"{s.compress_wall / 60:.1f}" if s.compress_wall is not None else ""
        cpu = f"{s.compress_cpu / 60:.1f}" if s.compress_cpu is not None else ""
        over = f"{s.compress_wall / train_s:.2f}x" if (s.compress_wall is not None and train_s) else ""
        lines.append(f"|{s.name}|{s.method}|{bits}|{s.sizes['disk_bytes']:,}|{s.sizes['compression_ratio']:.2f}x|"
                     + "|".join(wers) + f"|{change}|{p}|{verdict}|{overall}|{wall}|{over}|{cpu}|")
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


def decodes_of(sets, main_set):
    """The labels of main_set under each decode: "test", "test (acoustic)", ..."""
    return [d for d in sets if d == main_set or d.startswith(main_set + " (")]


def best_lossless(systems, valid_set, sig, main_labels=()):
    """Per method, the most compressed system lossless on every test set under every decode; then, per decode of
    the main set (main_labels, e.g. "test", "test (acoustic)"), the most compressed lossless there alone."""
    def best(ok):
        out = {}
        for s in systems:
            if not s.is_float and ok(s) and (s.method not in out or s.sizes["compression_ratio"] >
                                             out[s.method].sizes["compression_ratio"]):
                out[s.method] = s
        return out
    every = best(lambda s: lossless_everywhere(s, sig, valid_set)[0])
    lines = ["|method|highest lossless ratio|system|weight bits|", "|---|---|---|---|"]
    for m, s in sorted(every.items()):
        lines.append(f"|{m}|{s.sizes['compression_ratio']:.2f}x|{s.name}|{s.weight_bits:.2f}|")
    if not every:
        lines.append("|(none)|no quantized system is lossless on every test set and decode|||")
    alone = {d: best(lambda s, d=d: (s.name, d) in sig and sig[(s.name, d)]["lossless"]) for d in main_labels}
    methods = sorted({m for b in alone.values() for m in b})
    if methods:
        lines += ["", "On one set under one decode alone (what a deployment serving that decode on such speech "
                  "needs), the highest lossless ratio:", "",
                  "|method|" + "|".join(main_labels) + "|", "|---|" + "---|" * len(main_labels)]
        for m in methods:
            lines.append(f"|{m}|" + "|".join(f"{alone[d][m].sizes['compression_ratio']:.2f}x ({alone[d][m].name})"
                                             if m in alone[d] else "none" for d in main_labels) + "|")
    return lines


def family_of(name):
    """A system's name without its seed (run.sh: exp/asr_<tag>_<conf>_seed<k> for seed k > 1, and an all-in-one
    run's nested systems and twins exp/asr_<tag>_<conf>_seed<k>_<system>[_twin])."""
    return re.sub(r"_seed\d+(?=_|$)", "", name)


def exact_wer(errors):
    """WER (%) of {utt: (errors, reference words)}, unrounded (sclite's report rounds to 0.1)."""
    return 100 * sum(e for e, _ in errors.values()) / max(sum(n for _, n in errors.values()), 1)


def seeds_table(systems, main_set, valid_set, sig):
    """Per system family (a quant conf over its seeds): WER mean and standard deviation over seeds, the
    verdict of each seed, and the bootstrap interval of the WER difference to the float reference."""
    floats = [s for s in systems if s.is_float]
    ref = reference_for(main_set, floats)
    families = {}
    for s in systems:
        if s is not ref and main_set in s.wer:
            families.setdefault(family_of(s.name), []).append(s)
    lines = [f"|system|method|seeds|{main_set} WER, mean ± sd over seeds|lossless (every test set and decode), "
             f"seeds|{main_set} WER change against {ref.name if ref else 'the float reference'}|bootstrap 95% "
             "interval|", "|---|---|---|---|---|---|---|"]
    ref_errors = utterance_errors(ref.sgml(main_set)) if families else None   # read once, not per family
    for name, members in families.items():
        errors = [utterance_errors(m.sgml(main_set)) for m in members]
        # exact, from the alignments (result.txt rounds to 0.1)
        wers = [exact_wer(u) for u in errors]
        mean = sum(wers) / len(wers)
        sd = (sum((w - mean) ** 2 for w in wers) / (len(wers) - 1)) ** 0.5 if len(wers) > 1 else 0.0
        verdicts = [lossless_everywhere(m, sig, valid_set)[0] for m in members]
        k = sum(bool(v) for v in verdicts)
        diff, lo, hi = bootstrap_errors(errors, ref_errors, [m.sgml(main_set) for m in members], ref.sgml(main_set))
        seeds = ", ".join(str(m.seed) if m.seed is not None else "?" for m in members)
        lines.append(f"|{name}|{members[0].method}|{seeds}|{mean:.2f} ± {sd:.2f}|{k} of {len(members)}|"
                     f"{diff:+.2f}|[{lo:+.2f}, {hi:+.2f}]|")
    return lines


NEAR_BITS = 1.0   # the uniform systems shown beside a budget store at most this many bits more or fewer


def budget_bits(s):
    """A mixed-precision system's budget in stored bits a parameter (whole file; 32 / ratio), or None
    (a size budget, or not mixed precision)."""
    if not s.mixed or "size_mb" in s.budget:
        return None
    return float(s.budget["avg_bits"]) if "avg_bits" in s.budget else 32.0 / float(s.budget["ratio"])


def budget_of(s):
    """The budget of a mixed-precision system as text ('3 stored bits (10.67x)', '1.2 MB'), else None."""
    if not s.mixed:
        return None
    bits = budget_bits(s)
    return f"{s.budget['size_mb']} MB" if bits is None else f"{bits:g} stored bits ({32 / bits:.2f}x)"


def uniform_beside(fams, bits):
    """The uniform families (QAT or PTQ, every layer at the same bits) shown beside a budget of `bits` stored
    bits: on each side of it the one storing nearest (all that store as much, e.g. QAT and PTQ of one width),
    within NEAR_BITS; e.g. at 3 bits uniform 2 (2.52 stored) and 3 (3.51) bits."""
    if bits is None:
        return set()
    stored = {f: round(32.0 / m[0].sizes["compression_ratio"], 2) for f, m in fams.items()
              if m[0].kind in ("qat", "ptq") and len(set(m[0].bits_per_layer.values())) <= 1}
    keep = set()
    for side in (lambda x: x <= bits, lambda x: x > bits):
        near = {f: abs(x - bits) for f, x in stored.items() if side(x) and abs(x - bits) <= NEAR_BITS}
        nearest = min(near.values(), default=None)
        keep |= {f for f, d in near.items() if d == nearest}
    return keep


def against_one_stage(one, s, main_set):
    """MAPSSWE of the one-stage system against another system of its budget on main_set, as text:
    one-stage's errors minus the other's, and p."""
    if one is None or s is one or main_set not in s.wer or main_set not in one.wer:
        return ""
    same_reference(one, s, main_set)
    r = compare(one.sgml(main_set), s.sgml(main_set), one.name, s.name,
                os.path.join(one.decode_dirs[main_set], "mapsswe_vs", s.name))
    return f"{int(r['err_b'] - r['err_a']):+d} errors, p {fmt_p(r['p'])}" + (" (**sig.**)" if r["significant"] else "")


def families(systems, main_set):
    """{family: [members in seed order]} of the systems scored on main_set (a quant conf over its seeds)."""
    out = {}
    for s in systems:
        if main_set in s.wer:
            out.setdefault(family_of(s.name), []).append(s)
    return out


def mean_sd(values):
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, sd


def one_stage_against(one, other, main_set):
    """One-stage's family against another of its budget: per seed (paired by seed) MAPSSWE on main_set,
    and the paired bootstrap 95% interval of the difference of their mean WERs over the seeds."""
    if one is None or other is one:
        return ""
    by_seed = {m.seed: m for m in other}
    pairs = [(a, by_seed[a.seed]) for a in one if a.seed in by_seed]
    per_seed = "; ".join(f"s{a.seed}: {against_one_stage(a, b, main_set)}" for a, b in pairs)
    diff, lo, hi = bootstrap_errors([utterance_errors(a.sgml(main_set)) for a in one],
                                    [utterance_errors(b.sgml(main_set)) for b in other],
                                    [a.sgml(main_set) for a in one], other[0].sgml(main_set))
    return f"{per_seed}; mean {diff:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def mean_time(members):
    """The compression time of a conf's seeds, each part (search, train, pack, wall, cpu) the mean over the
    seeds that timed it; None when none did."""
    timed = [m for m in members if m.compress_parts]
    if not timed:
        return None
    t = {w: mean_sd([m.compress_parts[w] for m in timed])[0] for w in ("search", "train", "pack")}
    t["wall"] = mean_sd([m.compress_wall for m in timed])[0]
    t["cpu"] = mean_sd([m.compress_cpu or 0.0 for m in timed])[0]
    return t


def time_over(t, own, part="cpu"):
    """'1.23x': t's part (of mean_time's: wall, cpu, ...) over own's, or '' when either is untimed."""
    return f"{t[part] / own[part]:.2f}x" if t and own and own[part] else ""


def equal_budget(systems, main_set, valid_set, sig):
    """Per budget of the mixed-precision systems: a row per quant conf (its seeds together) of each method
    and of the uniform systems storing nearest to it on either side (`uniform_beside`), with accuracy over
    the seeds, the one-stage conf tested against it (per seed and over the seeds), and the compression time
    (mean over the seeds) split into search, fine-tuning and packing (wall and CPU)."""
    budgets = {budget_of(s): budget_bits(s) for s in systems if s.mixed}
    fams = families([s for s in systems if not s.is_float], main_set)
    lines = []
    for b, bits in budgets.items():
        beside = uniform_beside(fams, bits)
        rows = {f: m for f, m in fams.items() if budget_of(m[0]) == b or f in beside}
        one_name = next((n for n, m in rows.items() if m[0].kind == "one_stage"), None)
        one = rows.get(one_name)
        lines += [f"### Budget {b}", "",
                  f"|system|method|seeds|stored bits (ratio)|{valid_set} WER|{main_set} WER, mean ± sd|lossless, seeds|"
                  "search (min)|fine-tuning (min)|pack (min)|total (min)|wall over one-stage|CPU over one-stage|"
                  f"one-stage against it ({main_set} errors, MAPSSWE p, per seed; mean WER difference [95%])|",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        times = {name: mean_time(members) for name, members in rows.items()}
        o = times.get(one_name)
        for name, members in rows.items():
            first = members[0]
            ratio = mean_sd([m.sizes["compression_ratio"] for m in members])[0]
            valid = [m.wer[valid_set] for m in members if valid_set in m.wer]
            main, sd = mean_sd([exact_wer(utterance_errors(m.sgml(main_set))) for m in members])
            k = sum(bool(lossless_everywhere(m, sig, valid_set)[0]) for m in members)
            t = times[name]
            minutes = [f"{t[w] / 60:.1f}" for w in ("search", "train", "pack", "wall")] if t else [""] * 4
            valid_wer = f"{mean_sd(valid)[0]:.2f}" if valid else ""
            lines.append(f"|{name}|{first.method}|{', '.join(str(m.seed) for m in members)}|"
                         f"{32 / ratio:.2f} ({ratio:.2f}x)|{valid_wer}|{main:.2f} ± {sd:.2f}|{k} of {len(members)}|"
                         + "|".join(minutes) + f"|{time_over(t, o, 'wall')}|{time_over(t, o)}|"
                         f"{one_stage_against(one, members, main_set)}|")
        lines.append("")
        for other_name, other in rows.items():
            if other[0].kind != "one_stage" or other is one:
                continue
            # its compute beside theirs (e.g. a conf of half the fine-tuning against the full two-stage ones)
            vs = []
            for n, m in rows.items():
                if m[0].kind != "one_stage":
                    r = time_over(times[n], times[other_name])
                    vs.append(f"{n}{f' ({r})' if r else ''}: {one_stage_against(other, m, main_set)}")
            if vs:
                lines += [f"{family_of(other[0].name)} against the others (in brackets, their CPU time over its "
                          "own): " + "; ".join(vs) + ".", ""]
    return lines


def aio_time(nested, twins):
    """The time of one all-in-one run (its nested systems' records) and of its twins trained one by one:
    {one, alone, twins, per_update[, one_cpu, alone_cpu]} in seconds, or None when either is untimed."""
    have = [t for t in twins if t is not None and t.compress_parts]
    if not nested[0].compress_parts or not have:
        return None
    out = {"one": nested[0].compress_parts["train"] + sum(n.compress_parts["pack"] for n in nested),
           "alone": sum(t.compress_wall for t in have), "twins": len(have),
           "per_update": nested[0].compress_parts["train"] / (sum(t.compress_parts["train"] for t in have) / len(have))}
    if nested[0].train_cpu is not None and all(t.compress_cpu is not None for t in have):
        # every nested system's record holds the one run's training and its own packing
        out["one_cpu"] = sum(n.compress_cpu for n in nested) - (len(nested) - 1) * nested[0].train_cpu
        out["alone_cpu"] = sum(t.compress_cpu for t in have)
    return out


def all_in_one_runs(systems):
    """{(quant conf, seed): [its nested systems]} of the all-in-one runs among systems."""
    runs = {}
    for s in systems:
        if s.kind == "all_in_one":
            runs.setdefault((s.quant_conf, s.seed), []).append(s)
    return runs


_TWIN = {}   # against_twin's results (cached_on_files)


def against_twin(n, t, d):
    """MAPSSWE of a nested system against its twin under decode d (err_b: the nested system's errors,
    err_a: the twin's). The seeds table and the per-seed sections both ask: sc_stats runs once while
    neither alignment changes on disk."""
    a, b = n.sgml(d), t.sgml(d)
    return cached_on_files(_TWIN, [a, b], lambda: compare(a, b, n.name, t.name,
                                                          os.path.join(n.decode_dirs[d], "mapsswe_vs", t.name)))


def all_in_one_seeds(systems, sets, main_set, valid_set, sig, plot_dir):
    """Per all-in-one conf run at several seeds: each nested system over the seeds beside its twins (WER mean
    and sd under every decode of main_set, the nested-minus-twin WER difference with a paired bootstrap 95%
    interval, in how many seeds MAPSSWE finds it significantly worse or better than its twin, in how many it is
    lossless), and the time of the one pass against the twins, per seed and in the mean."""
    by_name = {s.name: s for s in systems}
    labels = decodes_of(sets, main_set)
    confs = {}
    for (qc, seed), nested in all_in_one_runs(systems).items():
        confs.setdefault(qc, {})[seed] = nested
    lines = []
    for qc, runs in confs.items():
        if len(runs) < 2:
            continue
        name = os.path.splitext(os.path.basename(qc or "all_in_one"))[0]
        seeds = sorted(runs, key=lambda k: (k is None, k))
        lines += [f"### {name} over seeds {', '.join(str(k) for k in seeds)}", "",
                  "|system|seeds|ratio|" + "|".join(f"{d} WER nested / twin, mean ± sd" for d in labels) + "|"
                  + "|".join(f"{d}: nested − twin [95%]|{d}: nested sig. worse / better than twin, seeds"
                             for d in labels) + "|nested lossless, seeds|",
                  "|---|---|---|" + "---|" * (3 * len(labels)) + "---|"]
        fams = {}
        for seed in seeds:
            for n in runs[seed]:
                fams.setdefault(family_of(n.name), []).append(n)
        for fam, members in fams.items():
            pairs = [(n, by_name.get(n.twin)) for n in members]
            pairs = [(n, t) for n, t in pairs if t is not None]
            cells, diffs = [], []
            for d in labels:
                have = [(n, t) for n, t in pairs if d in n.wer and d in t.wer]
                if not have:
                    cells.append("-")
                    diffs += ["-", "-"]
                    continue
                ne = [utterance_errors(n.sgml(d)) for n, _ in have]
                te = [utterance_errors(t.sgml(d)) for _, t in have]
                (nm, nsd), (tm, tsd) = mean_sd([exact_wer(e) for e in ne]), mean_sd([exact_wer(e) for e in te])
                cells.append(f"{nm:.2f} ± {nsd:.2f} / {tm:.2f} ± {tsd:.2f}")
                diff, lo, hi = bootstrap_errors(ne, te, [n.sgml(d) for n, _ in have], have[0][1].sgml(d))
                worse = better = 0
                for n, t in have:
                    c = against_twin(n, t, d)
                    worse += bool(c["significant"] and c["err_b"] > c["err_a"])
                    better += bool(c["significant"] and c["err_b"] < c["err_a"])
                diffs += [f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}]", f"{worse} / {better} of {len(have)}"]
            k = sum(bool(lossless_everywhere(n, sig, valid_set)[0]) for n in members)
            ratio = mean_sd([n.sizes["compression_ratio"] for n in members])[0]
            lines.append(f"|{fam}|{', '.join(str(n.seed) for n in members)}|{ratio:.2f}x|" + "|".join(cells) + "|"
                         + "|".join(diffs) + f"|{k} of {len(members)}|")
        lines.append("")
        points = []
        for fam, members in fams.items():
            for group, side in (("nested", members), ("twin (alone)", [by_name.get(n.twin) for n in members])):
                side = [m for m in side if m is not None and main_set in m.wer]
                if side:
                    wer, lo, hi = bootstrap_wer([utterance_errors(m.sgml(main_set)) for m in side])
                    points.append({"name": " ".join(fam.split("_")[-3:]) if group == "nested" else "", "group": group,
                                   "bytes": mean_sd([m.sizes["disk_bytes"] for m in side])[0], "wer": wer, "lo": lo,
                                   "hi": hi, "seeds": len(side)})
        png = f"{name}_seeds_all_in_one.png"
        plots.pareto(points, os.path.join(plot_dir, png), main_set, lines=False)
        lines += [f"![{name} over seeds: nested systems and twins](results/{png})", ""]
        times = {seed: aio_time(runs[seed], [by_name.get(n.twin) for n in runs[seed]]) for seed in seeds}
        timed = {k: t for k, t in times.items() if t}
        if timed:
            wall = [t["alone"] / t["one"] for t in timed.values()]
            text = (f"Time, the twins one by one over the one pass: wall-clock "
                    + ", ".join(f"{t['alone'] / t['one']:.2f}x (seed {k})" for k, t in timed.items())
                    + f", mean {mean_sd(wall)[0]:.2f}x")
            cpu = {k: t["alone_cpu"] / t["one_cpu"] for k, t in timed.items() if "one_cpu" in t}
            if cpu:
                text += ("; CPU time " + ", ".join(f"{v:.2f}x (seed {k})" for k, v in cpu.items())
                         + f", mean {mean_sd(list(cpu.values()))[0]:.2f}x")
            lines += [text + ".", ""]
    return lines


def all_in_one_sections(systems, sets, main_set, valid_set, sig, plot_dir):
    """Per all-in-one run (an all_in_one conf and seed): each nested system beside its twin (size, WER under
    every decode of main_set, MAPSSWE against the float reference and against the twin), the plot of
    WER against size of both families, the time of the one pass against the sum of the twins' runs, and
    the highest lossless ratio of the family, of the twins and of the report's other systems."""
    by_name = {s.name: s for s in systems}
    labels = decodes_of(sets, main_set)
    lines = all_in_one_seeds(systems, sets, main_set, valid_set, sig, plot_dir)
    for (qc, seed), nested in all_in_one_runs(systems).items():
        name = os.path.splitext(os.path.basename(qc or "all_in_one"))[0]
        twins = {n.name: by_name.get(n.twin) for n in nested}   # its own or, with twins_from, another conf's
        lines += [f"### {name} (seed {seed})", ""]
        shared = sorted({t.quant_conf for t in twins.values() if t is not None and t.quant_conf != qc})
        if shared:
            lines += [f"Its twins are those of {', '.join(shared)} (`twins_from`: the same configs, trained once).", ""]
        lines += ["|system|size on disk (bytes)|ratio|" + "|".join(f"{d} WER nested / twin" for d in labels)
                  + "|" + "|".join(f"{d}: nested vs float, vs twin (errors, p)" for d in labels) + "|",
                  "|---|---|---|" + "---|" * (2 * len(labels))]
        for n in nested:
            t = twins[n.name]
            cells = [f"{n.wer.get(d, float('nan')):.1f} / " + (f"{t.wer[d]:.1f}" if t and d in t.wer else "-")
                     for d in labels]
            tests = []
            for d in labels:
                r = sig.get((n.name, d))
                vs_float = verdict_of(r) + f" (p {fmt_p(r['p'])})" if r else ""
                vs_twin = ""
                if t and d in t.wer and d in n.wer:
                    c = against_twin(n, t, d)
                    # err_b: the nested system's errors, err_a: the twin's
                    vs_twin = f"{int(c['err_b'] - c['err_a']):+d}, p {fmt_p(c['p'])}" + (" (**sig.**)" if c["significant"] else "")
                tests.append(f"{vs_float}; {vs_twin}")
            lines.append(f"|{n.name}|{n.sizes['disk_bytes']:,}|{n.sizes['compression_ratio']:.2f}x|" + "|".join(cells)
                         + "|" + "|".join(tests) + "|")
        lines.append("")
        t = aio_time(nested, twins.values())
        if t:
            lines += [f"Time: the one pass {t['one'] / 60:.1f} min (its fine-tuning and the packing of {len(nested)} "
                      f"systems) against {t['alone'] / 60:.1f} min for the {t['twins']} twins trained and packed one by "
                      f"one: **{t['alone'] / t['one']:.2f}x less**. Every run makes the same number of updates, so one "
                      f"update of the all-in-one run costs {t['per_update']:.2f}x a twin's."]
            if "one_cpu" in t:
                lines[-1] += (" In CPU time, which the jobs running beside them inflate less than wall-clock time: "
                              f"{t['one_cpu'] / 60:.1f} against {t['alone_cpu'] / 60:.1f} min, "
                              f"**{t['alone_cpu'] / t['one_cpu']:.2f}x less**.")
            lines += [""]
        best = {}
        for label, group in (("nested", nested), ("twins", [t for t in twins.values() if t]),
                             ("other systems", [s for s in systems if not s.is_float and s.kind not in AIO])):
            ok = [s for s in group if lossless_everywhere(s, sig, valid_set)[0]]
            best[label] = max(ok, key=lambda s: s.sizes["compression_ratio"]) if ok else None
        lines += ["Highest lossless ratio (every test set and decode): " + "; ".join(
            f"{label} {b.sizes['compression_ratio']:.2f}x ({b.name})" if b else f"{label}: none lossless"
            for label, b in best.items()) + ".", ""]
        points = []
        for group, members in (("nested", nested), ("twin (alone)", [t for t in twins.values() if t])):
            for m in members:
                if main_set in m.wer:
                    wer, lo, hi = bootstrap_wer([utterance_errors(m.sgml(main_set))])
                    label = " ".join(m.name.split("_")[-3:]) if group == "nested" else ""   # e.g. "d4 ff1 w4"
                    points.append({"name": label, "group": group,
                                   "bytes": m.sizes["disk_bytes"], "wer": wer, "lo": lo, "hi": hi, "seeds": 1})
        png = f"{name}_seed{seed}_all_in_one.png"
        plots.pareto(points, os.path.join(plot_dir, png), main_set, lines=False)
        lines += [f"![{name}: nested systems and twins](results/{png})", ""]
    return lines


def per_system(s, plot_dir):
    lines = [f"## {s.name}", ""]
    cfg = os.path.join(s.path, "config.yaml")
    if s.training:
        t = s.training
        lines += [f"- training: {t['epochs']} epochs in {t['train_seconds'] / 60:.1f} min, best validation "
                  f"accuracy {100 * t['best_valid_acc']:.1f}% at epoch {t['best_epoch']} "
                  f"(`{os.path.join(s.path, 'system.yaml')}`, config `{cfg}`)"]
    curve = os.path.join(s.path, "training_curve.png")
    if os.path.exists(curve):
        dst = os.path.join(plot_dir, f"{s.name}_training_curve.png")
        shutil.copyfile(curve, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
        lines += ["", f"![training curve of {s.name}](results/{os.path.basename(dst)})"]
    lines += [""]
    for unit in ("WER", "CER"):
        rows = []
        for test_set, d in s.decode_dirs.items():
            rows.append((os.path.relpath(d, s.path), parse_sum_avg(os.path.join(d, f"score_{unit.lower()}", "result.txt"))))
        lines += [f"### {unit}", ""] + table(rows) + [""]
    return lines


NOTES = "RESULTS.notes.md"


def notes(out):
    """The hand-written account of the runs (RESULTS.notes.md beside RESULTS.md), as RESULTS.md's lines:
    what the tables do not say (protocol choices, what was tried), kept across regenerations."""
    path = os.path.join(os.path.dirname(os.path.abspath(out)), NOTES)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    return [f"## Notes on these runs (`{NOTES}`)", "", text, ""]


def report(baseline, others, main_set, valid_set, out, decodes):
    """Write RESULTS.md to `out` and its plots to results/ beside it, for the float32 baseline's exp
    dir and the others' (decodes: the decode dirs' names inside each, the main decode first, e.g. the
    LM decode then the acoustic one); returns RESULTS.md's lines."""
    plot_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "results")
    os.makedirs(plot_dir, exist_ok=True)
    decodes = decodes.split() if isinstance(decodes, str) else list(decodes)
    systems = [System(baseline, decodes, True)] + [System(p, decodes, False) for p in others]
    if systems[0].kind != "float":
        raise ScoringError(f"{baseline}: the baseline is method {systems[0].kind} ({systems[0].method}) in its "
                           "system.yaml; it must be the float32 system")
    sets = []
    for s in systems:
        sets += [d for d in s.decode_dirs if d not in sets]
    if main_set not in systems[0].wer:
        raise ScoringError(f"{baseline}: not scored on {main_set} (--main_set); scored on: {', '.join(sets) or 'nothing'}")
    sig = significance(systems, sets)
    train_s = (systems[0].training or {}).get("train_seconds")
    cmd = (f"python -m mpq_plugins.bin.results --baseline {baseline} --systems \"{' '.join(others)}\" "
           f"--main_set {main_set} --valid_set {valid_set} --decode \"{' '.join(decodes)}\" --out {out}")
    lines = ["# mpq-asr results", "",
             f"Written by the report stage of run.sh (`{cmd}`); every number comes from files the earlier "
             "stages wrote: `system.yaml` (each system's method, sizes, bits, compression time and training), "
             "`<decode>/<set>/score_wer/result.txt` (sclite), `<decode>/<set>/mapsswe/result.json` "
             "(sc_stats MAPSSWE).", "", "## Environment", ""] + environment() + [""]
    lines += ["## Systems", "",
              "Every system is decoded from its packed file (`packed.safetensors`: quantized weights bit-packed at "
              "their bit-widths, their steps, float tensors as they are). Ratio = bytes of the float32 model / bytes "
              "of the packed file on disk. Change and significance are against the float reference of the set: the "
              "better of the float32 baseline and its fine-tuned control (the control's first seed). Lossless = not significantly worse "
              "(MAPSSWE, two-tailed, p < 0.05); a system is called lossless only if it is not significantly worse "
              "on every test set under every decode (" + ", ".join(f"`{d}`" for d in decodes) + "; a set under "
              "another decode than the first is labelled with it, e.g. `test (acoustic)`). Compression time: from "
              "the float checkpoint to the packed file, fine-tuning (and any search) included.", ""]
    lines += main_table(systems, sets, main_set, valid_set, sig, train_s) + [""]
    if train_s:
        lines += [f"FP32 training: {train_s / 60:.1f} min wall-clock ({systems[0].name}).", ""]
    lines += ["![WER against size](results/wer_vs_size.png)", ""]
    if any(s.kind in AIO for s in systems):
        lines += ["The plots of this report leave the all-in-one systems to their own section's plots.", ""]
    lines += notes(out)
    lines += ["## Highest lossless compression ratio per method (every test set, every decode)", ""]
    lines += best_lossless(systems, valid_set, sig, decodes_of(sets, main_set)) + [""]
    mpq = equal_budget(systems, main_set, valid_set, sig)
    if mpq:
        lines += [f"## Mixed precision at equal budget ({main_set})", "",
                  "Each budget's systems side by side: the mixed-precision methods and the uniform systems storing "
                  "nearest to it, one smaller and one larger (within a bit). Compression time (the mean over the "
                  "conf's seeds) split into the search of the bit-widths (two-stage methods; the one-stage method "
                  "searches inside its fine-tuning run), the fine-tuning and the packing.", ""] + mpq
    aio = all_in_one_sections(systems, sets, main_set, valid_set, sig, plot_dir)
    if aio:
        lines += ["## All-in-one: nested systems and their twins", "",
                  "One training run makes every nested system (its depth, feed-forward width and bits); each is "
                  "exported to a packed file of its own and decoded like any system. Its twin has the same "
                  "architecture and bits, fine-tuned alone from the float model (cut to that shape) for as many "
                  "updates. MAPSSWE: nested against the float reference (verdict), and nested minus twin errors. "
                  "A conf run at several seeds comes first over its seeds (WER mean and sd, the nested-minus-twin "
                  "WER difference of the seeds' mean errors with a paired bootstrap 95% interval, 2,000 resamplings "
                  "of the utterances), then each run on its own.", ""] + aio
    lines += [f"## Seeds and intervals ({main_set})", "",
              "Each quant conf over the seeds it was fine-tuned with (`run.sh --seeds`; `<system>_seed<k>` for seed "
              "k > 1): the WER's mean and standard deviation over seeds, in how many seeds it is lossless, and the "
              "difference of its WER (mean over seeds) to the float reference with a paired bootstrap 95% interval "
              "(2,000 resamplings of the utterances).", ""] + seeds_table(systems, main_set, valid_set, sig) + [""]
    lines += ["## Significance (MAPSSWE) per test set", ""] + significance_table(sig, sets) + [""]
    points = []
    plotted = [s for s in systems if s.kind not in AIO]   # all-in-one families: their own plots (sections above)
    for s in plotted:
        if main_set in s.wer:
            points.append({"name": s.name.replace(systems[0].name, "").lstrip("_") or s.name,
                           "bytes": s.sizes["disk_bytes"], "wer": s.wer[main_set],
                           "lossless": bool(lossless_everywhere(s, sig, valid_set)[0]), "float": s.is_float})
    plots.wer_vs_size(points, os.path.join(plot_dir, "wer_vs_size.png"), main_set)
    fams = families(plotted, main_set)
    if any(len(m) > 1 for m in fams.values()) or any(s.mixed for s in systems):
        pareto = []
        for name, members in fams.items():
            wer, lo, hi = bootstrap_wer([utterance_errors(m.sgml(main_set)) for m in members])
            pareto.append({"name": name.replace(systems[0].name, "").lstrip("_") or name,
                           "group": "float32" if members[0].is_float else members[0].method,
                           "bytes": sum(m.sizes["disk_bytes"] for m in members) / len(members),
                           "wer": wer, "lo": lo, "hi": hi, "seeds": len(members)})
        plots.pareto(pareto, os.path.join(plot_dir, "wer_vs_size_seeds.png"), main_set, numbered=True)
        lines += ["## WER against size, seeds together", "",
                  f"Each quant conf at its mean size on disk and the {main_set} WER of its seeds' mean errors, with the "
                  "bootstrap 95% interval (utterances resampled); a line joins the systems of one method, a number "
                  "beside each point names it in the key.", "",
                  "![WER against size, seeds together](results/wer_vs_size_seeds.png)", ""]
    mixed = [s for s in systems if len(set(s.bits_per_layer.values())) > 1]
    if mixed:
        lines += ["## Bit allocation of the mixed-precision systems", ""] + output_layer_bits(mixed, main_set)
        for s in mixed:
            png = f"{s.name}_bits.png"
            plots.bit_allocation(s.name, s.bits_per_layer, os.path.join(plot_dir, png))
            lines += [f"![bit allocation of {s.name}](results/{png})", ""]
    for s in systems:
        if s.decode_dirs:
            lines += per_system(s, plot_dir)
    write_atomic(out, "\n".join(lines) + "\n")
    return lines


OUTPUT_LAYERS = ("ctc.ctc_lo", "decoder.output_layer")   # the CTC and decoder outputs (an imported CTC head: ctc_lo)


def output_layer_bits(mixed, main_set):
    """A table of the bits each mixed-precision system gives the model's output layers (OUTPUT_LAYERS that
    any of them has) beside its main_set WER: a search that starves the last projection shows here at once."""
    names = [n for n in OUTPUT_LAYERS if any(n in s.bits_per_layer for s in mixed)]
    if not names:
        return []
    lines = [f"Bits of the output layers (`{'`, `'.join(names)}`) beside the {main_set} WER (first decode), per system "
             "and seed:", "", "|system|method|seed|stored bits|" + "|".join(f"`{n}`" for n in names)
             + f"|{main_set} WER|", "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for s in mixed:
        wer = s.wer.get(main_set)
        lines.append(f"|{s.name}|{s.method}|{s.seed}|{32 / s.sizes['compression_ratio']:.2f}|"
                     + "|".join(str(s.bits_per_layer.get(n, "")) for n in names)
                     + f"|{'' if wer is None else f'{wer:.1f}'}|")
    return lines + [""]


def summary(lines):
    """The part of RESULTS.md's lines the report stage prints: everything before the significance details."""
    return lines[: lines.index("## Significance (MAPSSWE) per test set")]
