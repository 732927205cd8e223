"""Two systems against each other on every test set and decode both were scored on: WER, the
difference in errors, MAPSSWE (sc_stats when SCTK is installed) and a paired bootstrap interval of the
WER difference. The report tests every system against the float reference and the one-stage conf
against the others of its budget; this answers any other question ("did pinning the output layers
help?") with the same evidence. The sc_stats files go next to system B's scores:

    <b>/<decode>/<set>/mapsswe_vs_<a name>/   the two alignments, sc_stats' report, result.json
"""
import glob
import os

from mpq_plugins.eval.scoring import parse_sum_avg
from mpq_plugins.eval.sctk import ScoringError
from mpq_plugins.eval.significance import bootstrap_interval, check_same_reference, compare


def scored(system_dir):
    """{(decode, set): score_wer dir} of a system dir's sclite scores."""
    out = {}
    for sgml in sorted(glob.glob(os.path.join(system_dir, "decode_*", "*", "score_wer", "hyp.trn.sgml"))):
        score = os.path.dirname(sgml)
        test_set = os.path.dirname(score)
        out[(os.path.basename(os.path.dirname(test_set)), os.path.basename(test_set))] = score
    return out


def compare_pair(a_dir, b_dir, n_resamples=2000):
    """[row] of system b against system a, a row per (decode, set) both have: decode, set, wer_a,
    wer_b, err_a, err_b, words, p, verdict, diff, low, high (b - a, % absolute, 95% bootstrap)."""
    names = [os.path.basename(os.path.normpath(d)) for d in (a_dir, b_dir)]
    if os.path.realpath(a_dir) == os.path.realpath(b_dir):
        raise ScoringError(f"{a_dir}: a system compared with itself")
    if names[0] == names[1]:
        names = [names[0] + "_a", names[1] + "_b"]
    have = [scored(d) for d in (a_dir, b_dir)]
    for d, h in zip((a_dir, b_dir), have):
        if not h:
            raise ScoringError(f"{d}: no sclite scores (<decode>/<set>/score_wer/hyp.trn.sgml): decode and score it first")
    common = sorted(set(have[0]) & set(have[1]))
    if not common:
        raise ScoringError(f"{a_dir} ({', '.join('/'.join(k) for k in have[0])}) and {b_dir} "
                           f"({', '.join('/'.join(k) for k in have[1])}) share no decode and test set")
    rows = []
    for key in common:
        sa, sb = have[0][key], have[1][key]
        check_same_reference(sa, sb, names[0], names[1], "/".join(key))
        outdir = os.path.join(os.path.dirname(sb), f"mapsswe_vs_{names[0]}")
        r = compare(os.path.join(sb, "hyp.trn.sgml"), os.path.join(sa, "hyp.trn.sgml"), names[1], names[0], outdir)
        diff, lo, hi = bootstrap_interval([os.path.join(sb, "hyp.trn.sgml")], os.path.join(sa, "hyp.trn.sgml"),
                                          n_resamples=n_resamples)
        wa, wb = (parse_sum_avg(os.path.join(s, "result.txt")) for s in (sa, sb))
        verdict = "B significantly worse" if r["worse"] else "B significantly better" if r["better"] else "no significant difference"
        rows.append({"decode": key[0], "set": key[1], "wer_a": wa["Err"], "wer_b": wb["Err"], "words": wa["Wrd"],
                     "err_a": r["err_a"], "err_b": r["err_b"], "p": r["p"], "verdict": verdict, "tool": r["tool"],
                     "diff": diff, "low": lo, "high": hi})
    return rows


def markdown(a_dir, b_dir, rows):
    lines = [f"A = {a_dir}, B = {b_dir}", "",
             "|decode|set|words|A WER|B WER|B - A errors|MAPSSWE p|verdict|B - A WER [95% bootstrap]|",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "<0.001" if r["p"] < 0.001 else f"{r['p']:.3f}"
        lines.append(f"|{r['decode']}|{r['set']}|{r['words']}|{r['wer_a']:.1f}|{r['wer_b']:.1f}|"
                     f"{int(r['err_b']) - int(r['err_a']):+d}|{p}|{r['verdict']}|{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]|")
    return "\n".join(lines) + "\n"
