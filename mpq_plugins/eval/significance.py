"""Is a compressed system worse than the 32-bit one? NIST's matched-pairs sentence-segment word
error test (MAPSSWE), as SCTK's `sc_stats -p -t mapsswe` runs it on two sclite SGML alignments.

The papers call a system lossless when its WER is not significantly worse than the 32-bit
system's (two-tailed, p < 0.05). `compare` runs the test for one system against one baseline on
one test set and keeps the evidence next to the system's scores:

    <system>/<decode>/<set>/mapsswe/<system>.sgml, <baseline>.sgml   the alignments, titled
    <system>/<decode>/<set>/mapsswe/compare.stats.mapsswe            sc_stats' report
    <system>/<decode>/<set>/mapsswe/result.json                      z, p, verdict

sc_stats tells systems apart by the SGML `title`, which sclite takes from the hypothesis file's
name (hyp.trn for every system here), so the alignments are copied with the systems' names as
titles. Without SCTK the same statistic comes from mpq_plugins.eval.pyscore (tested to agree).
"""
import json
import math
import os
import re

from mpq_plugins.datadir import write_atomic
from mpq_plugins.eval import pyscore
from mpq_plugins.eval.pyscore import two_tailed_p
from mpq_plugins.eval.sctk import ScoringError, find_tool

ALPHA = 0.05


def retitle(src, dst, title):
    """Copy an sclite SGML alignment file, naming its system `title`."""
    with open(src, encoding="utf-8") as f:
        text = f.read()
    new, n = re.subn(r'(<SYSTEM title=")[^"]*(")', lambda m: m.group(1) + title + m.group(2), text, count=1)
    if n != 1:
        raise ScoringError(f"{src}: not an sclite SGML alignment (no <SYSTEM title=...>)")
    write_atomic(dst, new)


def check_same_reference(score_a, score_b, name_a, name_b, test_set):
    """One clear error unless two sclite score dirs (score_wer) were scored against the same ref.trn."""
    ra, rb = os.path.join(score_a, "ref.trn"), os.path.join(score_b, "ref.trn")
    with open(ra, "rb") as fa, open(rb, "rb") as fb:
        if fa.read() != fb.read():
            raise ScoringError(f"{ra} and {rb} differ: {name_a} and {name_b} were scored on different "
                               f"references for {test_set}; rescore both with the same data dir")


def verdict(result, alpha=ALPHA):
    """Add significant / worse / lossless to a result whose system A is the baseline, B the system."""
    significant = result["p"] < alpha
    worse = significant and result["err_b"] > result["err_a"]
    better = significant and result["err_b"] < result["err_a"]
    return {**result, "significant": significant, "worse": worse, "better": better, "lossless": not worse}


def compare(sys_sgml, base_sgml, sys_name, base_name, outdir):
    """MAPSSWE of a system against its baseline (both sclite SGML files of one test set).
    Writes outdir/result.json and returns its dict: z, p, n_segments, err_a (baseline), err_b
    (system), significant, worse, lossless, tool."""
    for path in (sys_sgml, base_sgml):
        if not os.path.exists(path):
            raise ScoringError(f"{path}: no sclite alignment (run the score stage first)")
    if sys_name == base_name:
        raise ScoringError(f"{sys_sgml}: a system compared with itself")
    os.makedirs(outdir, exist_ok=True)
    a = os.path.join(outdir, f"{base_name}.sgml")
    b = os.path.join(outdir, f"{sys_name}.sgml")
    retitle(base_sgml, a, base_name)
    retitle(sys_sgml, b, sys_name)
    try:
        find_tool("sc_stats")
        result = pyscore.run_sc_stats(a, b, outdir)
        tool = "sc_stats"
    except ScoringError as e:
        if "not found" not in str(e):
            raise
        result = pyscore.mapsswe(pyscore.read_sgml(a)[1], pyscore.read_sgml(b)[1])
        tool = "mpq_plugins.eval.pyscore (SCTK not installed)"
    z = result["z"]   # sc_stats reports z = 0 (p = 1) when every segment differs alike, and so do we
    result = verdict({**result, "p": 1.0 if math.isnan(z) else two_tailed_p(z)})
    result.update({"tool": tool, "system": sys_name, "baseline": base_name,
                   "system_sgml": sys_sgml, "baseline_sgml": base_sgml})
    write_atomic(os.path.join(outdir, "result.json"), json.dumps(result, indent=1))
    return result


def cached_on_files(cache, paths, make):
    """make() once while none of the files changes on disk: cache[their real paths] holds their
    (mtime_ns, size)s and the result. A missing file is not cached (make names it in its error)."""
    key = tuple(os.path.realpath(p) for p in paths)
    try:
        stamp = tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, key))
    except OSError:
        return make()
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    result = make()
    cache[key] = (stamp, result)
    return result


_ERRORS = {}   # utterance_errors already read (cached_on_files)


def utterance_errors(sgml):
    """{utt id: (word errors, reference words)} of an sclite SGML alignment (a report asks for the same
    file several times: it is read once while it does not change on disk)."""
    def read():
        _, paths = pyscore.read_sgml(sgml)
        return {u: (sum(op != "C" for op, _, _ in p), sum(op != "I" for op, _, _ in p)) for u, p in paths.items()}
    return dict(cached_on_files(_ERRORS, [sgml], read))


def bootstrap_interval(sys_sgmls, ref_sgml, n_resamples=2000, seed=0, level=0.95):
    """(difference, low, high): the WER of the systems (the mean of their per-utterance errors: one
    system, or one per seed) minus the reference's, in % absolute, and its paired bootstrap interval
    (utterances resampled with replacement, the same draw for both sides; percentile interval)."""
    return bootstrap_errors([utterance_errors(p) for p in sys_sgmls], utterance_errors(ref_sgml),
                            sys_sgmls, ref_sgml, n_resamples, seed, level)


def bootstrap_errors(systems, ref, sys_names, ref_name, n_resamples=2000, seed=0, level=0.95):
    """bootstrap_interval on utterance_errors already read (names: for the error message). ref may be a
    list (several seeds of the reference side: the mean of their errors per utterance)."""
    import numpy as np
    refs = ref if isinstance(ref, list) else [ref]
    for path, s in zip(sys_names, systems):
        if any(set(s) != set(r) for r in refs):
            raise ScoringError(f"{path} and {ref_name} align different utterances: not the same test set")
    utts = sorted(refs[0])
    e_ref = np.mean([[r[u][0] for u in utts] for r in refs], axis=0)
    words = np.array([refs[0][u][1] for u in utts], dtype=float)
    e_sys = np.mean([[s[u][0] for u in utts] for s in systems], axis=0)
    idx = np.random.default_rng(seed).integers(0, len(utts), size=(n_resamples, len(utts)))
    diffs = 100 * (e_sys[idx].sum(1) - e_ref[idx].sum(1)) / np.maximum(words[idx].sum(1), 1)
    lo, hi = np.percentile(diffs, [50 * (1 - level), 100 - 50 * (1 - level)])
    return 100 * (e_sys.sum() - e_ref.sum()) / max(words.sum(), 1), float(lo), float(hi)


def bootstrap_wer(systems, n_resamples=2000, seed=0, level=0.95):
    """(WER, low, high) in %: the WER of the mean per-utterance errors of systems (utterance_errors of one
    system or of its seeds) with its bootstrap percentile interval (utterances resampled)."""
    import numpy as np
    utts = sorted(systems[0])
    errors = np.mean([[s[u][0] for u in utts] for s in systems], axis=0)
    words = np.array([systems[0][u][1] for u in utts], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(utts), size=(n_resamples, len(utts)))
    wers = 100 * errors[idx].sum(1) / np.maximum(words[idx].sum(1), 1)
    lo, hi = np.percentile(wers, [50 * (1 - level), 100 - 50 * (1 - level)])
    return 100 * errors.sum() / max(words.sum(), 1), float(lo), float(hi)
