"""A pure-Python stand-in for NIST SCTK: sclite's trn scoring and sc_stats' MAPSSWE test.

Used when SCTK is not installed; tests/test_pyscore.py checks it against the real tools. It covers
what this project runs, and only that:

    sclite -r ref.trn trn -h hyp.trn trn -i rm -o sum sgml      write_result, write_sgml
    cat a.sgml b.sgml | sc_stats -p -t mapsswe -v -n NAME       mapsswe (run_sc_stats runs the real one)

sclite's rules, as reproduced here (found by reading SCTK's source and checked by experiment):

* Reading trn (sctk.read_trn): a line is "w1 w2 ... (id)"; the id is the text between the last
  "(" and the last ")". Without -s sclite is case-insensitive: it lowercases the whole line, id
  included, ASCII letters only (bytes of UTF-8 characters are left alone). The speaker ("-i rm")
  is the id up to its first "-" (or, without one, its first "_"). Only the hypothesis file's
  utterances are scored, in its order.
* Alignment: a Levenshtein table over (reference word i, hypothesis word j) with costs correct 0,
  substitution 4, insertion 3, deletion 3. Each cell keeps ONE way in: the diagonal (correct or
  substitution) when it is no dearer than both others, else the deletion when strictly cheaper than
  the insertion, else the insertion. The path is read back from the last cell. So on ties sclite
  prefers a substitution/correct, then an insertion, then a deletion, deciding from the END of the
  utterance backwards: ref "a a" / hyp "a" gives D(a) C(a); ref "a b c" / hyp "c a b" gives
  I(c) C(a) C(b) D(c).
* Report percentages: count / reference words * 100 in double precision, rounded half away from
  zero to one decimal (SCTK's F_ROUND), so 1/16 = 6.25% prints as 6.3, not 6.2.

sc_stats' MAPSSWE rules (src/sclite/mtchprs.c, statdist.c; checked by experiment):

* Both systems' paths of an utterance are walked together, one reference word at a time;
  insertions are stepped over (and mark an error region). A word is a "boundary" word when both
  systems have it correct. Before the first error the walk remembers the last boundary word. After
  an error, a segment closes as soon as `min_boundary` boundary words in a row have been seen (an
  insertion in either system breaks the run); it spans from the (min_boundary)-th last boundary word
  before the errors (clipped at the utterance start) to the last of the closing boundary words,
  inclusive. The closing words may open the next segment, so segments can overlap and words in the
  overlap count twice in "# Ref wrds". The end of the utterance closes a segment that is still
  open, running to the end of both paths.
* Per segment: errors = path entries that are not correct (insertions included), reference
  words = entries that are not insertions, averaged over the two systems and rounded down.
  A segment with no error in either system is dropped. Utterances without errors in either system
  give no segment.
* The walk stops at the end of system A's path. If system B still has insertions left there, they
  make a last segment too (from the (min_boundary)-th last boundary word to the end), even when
  no error was pending: A = [C x, C y], B = [C x, C y, I z] is one segment of 2 words, errors 0/1.
* d = errors(A) - errors(B) per segment; mean, sample standard deviation (n - 1); Z = mean /
  (sd / sqrt(n)). When every d is equal (sum of squared deviations 0) sc_stats sets sd = Z = 0,
  even if the mean is not 0. With no segment at all (neither system makes an error) sc_stats
  crashes (segfault); here mean = sd = Z = 0, and run_sc_stats does not run it. p is two-tailed
  normal: erfc(|Z| / sqrt 2). sc_stats calls the difference significant when |Z| > 1.960.
* sc_stats tries to re-synchronise two paths whose reference words differ (for alternations in
  the reference); here that is an error: both systems must be scored on the same references.

Not covered (this project never uses them): sclite's case-sensitive mode (-s), alternations
"{a / b}" and optionally deletable "(words)" in references, fragments (-F), the null word "@",
character alignment (-c), word weights; ctm/stm inputs.
"""
import math
import os
import re
import subprocess
import time

from mpq_plugins.datadir import write_atomic
from mpq_plugins.eval.sctk import ScoringError, find_tool, read_trn, speaker_of

COST_SUB, COST_INS, COST_DEL = 4, 3, 3   # sclite's default word weights (a correct word costs 0)


# ----------------------------------------------------------------------------------------------
# Alignment

def align(ref, hyp):
    """Align two word lists as sclite does. Returns [(op, ref_word, hyp_word), ...] with op in
    "C" (correct), "S" (substitution), "D" (deletion: hyp_word None), "I" (insertion: ref_word
    None). Words are compared exactly (read_trn has already lowercased them, as sclite does)."""
    n, m = len(ref), len(hyp)
    # moves[i][j]: the last step of the cheapest alignment of ref[:i] with hyp[:j]:
    # 0 diagonal (C or S), 1 deletion (came from [i-1][j]), 2 insertion (came from [i][j-1]).
    moves = [bytearray([2]) * (m + 1)]
    prev = [j * COST_INS for j in range(m + 1)]
    for i in range(1, n + 1):
        r = ref[i - 1]
        cur = [i * COST_DEL]
        row = bytearray(m + 1)
        row[0] = 1
        for j in range(1, m + 1):
            diag = prev[j - 1] if r == hyp[j - 1] else prev[j - 1] + COST_SUB
            up = prev[j] + COST_DEL
            left = cur[j - 1] + COST_INS
            if diag <= up and diag <= left:       # a tie goes to the diagonal;
                cur.append(diag)
            elif up < left:                       # a deletion must be strictly cheaper than the insertion
                cur.append(up)
                row[j] = 1
            else:
                cur.append(left)
                row[j] = 2
        moves.append(row)
        prev = cur
    path = []
    i, j = n, m
    while i > 0 or j > 0:
        move = moves[i][j]
        if move == 0:
            i, j = i - 1, j - 1
            path.append(("C" if ref[i] == hyp[j] else "S", ref[i], hyp[j]))
        elif move == 1:
            i -= 1
            path.append(("D", ref[i], None))
        else:
            j -= 1
            path.append(("I", None, hyp[j]))
    path.reverse()
    return path


def count(path):
    """{"C": n, "S": n, "D": n, "I": n} of one alignment."""
    out = {"C": 0, "S": 0, "D": 0, "I": 0}
    for op, _, _ in path:
        out[op] += 1
    return out


# ----------------------------------------------------------------------------------------------
# Aligning trn files (read by sctk.read_trn, with sclite's rules)

def align_trn(ref_trn, hyp_trn):
    """Align every hypothesis utterance with its reference: {utt_id: path}, in hyp file order."""
    ref, hyp = read_trn(ref_trn), read_trn(hyp_trn)
    unknown = [u for u in hyp if u not in ref]
    if unknown:
        raise ScoringError(f"{hyp_trn}: {len(unknown)} utterances not in {ref_trn} (e.g. ({unknown[0]}))")
    return {utt: align(ref[utt], words) for utt, words in hyp.items()}


def _by_speaker(utt_ids):
    """Group ids by speaker, speakers in order of first appearance (as sclite does)."""
    groups = {}
    for utt in utt_ids:
        groups.setdefault(speaker_of(utt), []).append(utt)
    return groups


# ----------------------------------------------------------------------------------------------
# SGML alignment files (sclite -o sgml), read by sc_stats

def write_sgml(path, title, ref_trn, hyp_trn):
    """Write the alignments of hyp_trn against ref_trn as `sclite ... -o sgml` does; `title` names
    the system (sc_stats tells systems apart by it). Returns the {utt_id: path} dict it wrote."""
    paths = align_trn(ref_trn, hyp_trn)
    sequence = {utt: k for k, utt in enumerate(paths)}
    lines = [f'<SYSTEM title="{title}" ref_fname="{os.path.basename(ref_trn)}" '
             f'hyp_fname="{os.path.basename(hyp_trn)}" creation_date="{time.ctime()}" format="2.4" '
             f'frag_corr="FALSE" opt_del="FALSE" weight_ali="FALSE" weight_filename="">']
    for speaker, utts in _by_speaker(paths).items():
        lines.append(f'<SPEAKER id="{speaker}">')
        for utt in utts:
            entries = [f'{op},{_quote(r)},{_quote(h)}' for op, r, h in paths[utt]]
            lines.append(f'<PATH id="({utt})" word_cnt="{len(entries)}" sequence="{sequence[utt]}">')
            lines.append(":".join(entries))
            lines.append("</PATH>")
        lines.append("</SPEAKER>")
    lines.append("</SYSTEM>")
    write_atomic(path, "\n".join(lines) + "\n")
    return paths


def _quote(word):
    return "" if word is None else f'"{word}"'   # sclite writes a missing word as nothing at all


# One path entry: op, reference word (quoted, or nothing), hypothesis word (same). sclite does not
# escape quotes inside words, so a word ends at the quote that is followed by the next field.
_ENTRY = re.compile(r'([CSDI]),(?:"(.*?)")?,(?:"(.*?)")?(?=:[CSDI],|$)')
_TITLE = re.compile(r'<SYSTEM\b[^>]*\btitle="([^"]*)"')
_PATH = re.compile(r'<PATH\b[^>]*\bid="\(([^"]*)\)"')


def _parse_entries(chunk):
    """The (op, ref, hyp) entries of one path line; None for an entry that is not well formed."""
    matches = list(_ENTRY.finditer(chunk))
    if ":".join(e.group(0) for e in matches) != chunk:
        return [None]
    entries = [(e.group(1), e.group(2), e.group(3)) for e in matches]
    well_formed = {"C": lambda r, h: r is not None and r == h,
                   "S": lambda r, h: None not in (r, h) and r != h,
                   "D": lambda r, h: r is not None and h is None,
                   "I": lambda r, h: r is None and h is not None}
    return [e if well_formed[e[0]](e[1], e[2]) else None for e in entries]


def read_sgml(path):
    """Read an sclite SGML alignment file (sclite's or write_sgml's): (title, {utt_id: [(op, ref,
    hyp), ...]}), utt_id without parentheses, ref None for insertions, hyp None for deletions."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = _TITLE.search(text)
    if not m:
        raise ScoringError(f"{path}: not an sclite SGML alignment file (no <SYSTEM title=...>)")
    title, paths, utt, body = m.group(1), {}, None, []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("<PATH"):
            m = _PATH.match(line)
            if not m:
                raise ScoringError(f"{path}:{n}: <PATH> without an id \"(...)\"")
            utt, body = m.group(1), []
        elif line.startswith("</PATH>"):
            entries = [e for chunk in body if chunk.strip() for e in _parse_entries(chunk)]
            if None in entries:
                raise ScoringError(f"{path}: path ({utt}) has entries this reader cannot parse")
            if utt in paths:
                raise ScoringError(f"{path}: path ({utt}) appears twice")
            paths[utt], utt = entries, None
        elif utt is not None:
            body.append(line)
    return title, paths


# ----------------------------------------------------------------------------------------------
# The sum report (sclite -o sum), whose Sum/Avg line scoring.parse_sum_avg reads

def sclite_pct(num, den):
    """sclite's percentage (SCTK 1.3): num / den * 100 in double precision, 0 when den is 0."""
    return 0.0 if den == 0 else num / den * 100.0


def sclite_round(x, digits=1):
    """sclite's F_ROUND: half away from zero, by C's truncating int conversion (so 1/16 = 6.25%
    prints as 6.3, where Python's "%.1f" would print 6.2)."""
    scale = 10.0 ** digits
    return float(int(x * scale + (0.5 if x > 0.0 else -0.5))) / scale


def summarize(paths):
    """Counts over a {utt_id: path} dict: snt, wrd (reference words), C S D I, serr (sentences
    with any error)."""
    total = {"snt": 0, "wrd": 0, "C": 0, "S": 0, "D": 0, "I": 0, "serr": 0}
    for path in paths.values():
        c = count(path)
        for k in "CSDI":
            total[k] += c[k]
        total["snt"] += 1
        total["wrd"] += c["C"] + c["S"] + c["D"]
        total["serr"] += c["S"] + c["D"] + c["I"] > 0
    return total


def _cells(name, t):
    """One table row as sclite prints it: name, [snt, wrd], [Corr Sub Del Ins Err S.Err]."""
    numbers = (t["C"], t["S"], t["D"], t["I"], t["S"] + t["D"] + t["I"])
    if t["wrd"] > 0:
        pcts = [f"{sclite_round(sclite_pct(n, t['wrd'])):5.1f}" for n in numbers]
    else:   # no reference words: sclite shows the raw counts, starred
        pcts = [f"{n:5.0f}*" for n in numbers]
    pcts.append(f"{sclite_round(sclite_pct(t['serr'], t['snt'])):5.1f}")
    return f" {name}", [str(t["snt"]), str(t["wrd"])], pcts


def write_result(path, ref_trn, hyp_trn):
    """Write a report laid out like `sclite -o sum` (a row per speaker, then Sum/Avg) for hyp_trn
    against ref_trn; the title is hyp_trn's file name, as sclite's. Returns the Sum/Avg counts
    (see summarize)."""
    paths = align_trn(ref_trn, hyp_trn)
    total = summarize(paths)
    head = (" SPKR", ["# Snt", "# Wrd"], ["Corr", "Sub", "Del", "Ins", "Err", "S.Err"])
    rows = [_cells(spk, summarize({u: paths[u] for u in utts})) for spk, utts in _by_speaker(paths).items()]
    rows.append(_cells("Sum/Avg", total))
    w_name = max(len(r[0]) for r in rows + [head]) + 1
    w_count = max(len(c) for r in rows + [head] for c in r[1])
    w_pct = max(len(c) for r in rows + [head] for c in r[2])

    def line(r):
        counts = "  ".join(c.rjust(w_count) for c in r[1])
        pcts = "  ".join(c.rjust(w_pct) for c in r[2])
        return f"|{r[0].ljust(w_name)}| {counts} | {pcts} |"

    inner = len(line(head)) - 2
    w_counts = 2 * w_count + 4
    rule = "|" + "-" * w_name + "+" + "-" * w_counts + "+" + "-" * (inner - w_name - w_counts - 1) + "|"
    out = ["", "", "", "SYSTEM SUMMARY PERCENTAGES by SPEAKER".center(80).rstrip(), "",
           "," + "-" * inner + ".", "|" + os.path.basename(hyp_trn).center(inner) + "|",
           "|" + "-" * inner + "|", line(head)]
    for r in rows[:-1]:
        out += [rule, line(r)]
    out += ["|" + "=" * inner + "|", line(rows[-1]), "`" + "-" * inner + "'"]
    write_atomic(path, "\n".join(out) + "\n")
    return total


# ----------------------------------------------------------------------------------------------
# MAPSSWE: NIST's matched-pairs sentence-segment word error test

def _segments(path_a, path_b, min_boundary):
    """The MAPSSWE segments of one utterance: [(ref_words, errors_a, errors_b), ...]. The rules
    are in the module docstring; path_a and path_b must be on the same reference words."""
    segments = []

    def close(start_a, start_b, end_a, end_b):      # inclusive path indices
        part_a = path_a[max(start_a, 0):end_a + 1]
        part_b = path_b[max(start_b, 0):end_b + 1]
        err_a = sum(op != "C" for op, _, _ in part_a)
        err_b = sum(op != "C" for op, _, _ in part_b)
        ref_a = sum(op != "I" for op, _, _ in part_a)
        ref_b = sum(op != "I" for op, _, _ in part_b)
        if err_a or err_b:
            segments.append(((ref_a + ref_b) // 2, err_a, err_b))

    ia = ib = 0              # where the walk is in each path
    last_a = last_b = 0      # the last boundary word seen while no error was pending
    in_error = False         # an error was seen since the last segment closed
    run = 0                  # boundary words in a row since the last error
    back = min_boundary - 1  # how many earlier boundary words a segment starts before the error
    while ia < len(path_a):
        while ia < len(path_a) and path_a[ia][0] == "I":
            ia, in_error, run = ia + 1, True, 0
        while ib < len(path_b) and path_b[ib][0] == "I":
            ib, in_error, run = ib + 1, True, 0
        boundary = (ia < len(path_a) and path_a[ia][0] == "C"
                    and ib < len(path_b) and path_b[ib][0] == "C")
        if not in_error:
            if boundary:
                last_a, last_b = ia, ib
            else:
                in_error = True
        elif boundary:
            run += 1
            if run == min_boundary:
                close(last_a - back, last_b - back, ia, ib)
                last_a, last_b, in_error, run = ia, ib, False, 0
        else:
            run = 0
        ia = min(ia + 1, len(path_a))
        ib = min(ib + 1, len(path_b))
    # The walk stops at the end of A's path; what B still has left (insertions after the last
    # reference word) also makes the last segment, which runs to the end of both paths.
    if in_error or ib < len(path_b):
        close(last_a - back, last_b - back, len(path_a) - 1, len(path_b) - 1)
    return segments


def _reference(path):
    return [r for op, r, _ in path if op != "I"]


def _check_same_test(align_a, align_b, name_a="system A", name_b="system B"):
    if set(align_a) != set(align_b):
        only = sorted(set(align_a) ^ set(align_b))
        raise ScoringError(f"{name_a} and {name_b} are not on the same utterances "
                           f"({len(only)} in only one of them, e.g. ({only[0]}))")
    for utt in align_a:
        if _reference(align_a[utt]) != _reference(align_b[utt]):
            raise ScoringError(f"{name_a} and {name_b} have different reference words for ({utt})")


def mapsswe(align_a, align_b, min_boundary=2):
    """MAPSSWE of system A against system B, as `sc_stats -t mapsswe` computes it, on the
    {utt_id: path} dicts of two systems on the same references (read_sgml(...)[1]). Returns
    n_segments, n_sentences, ref_words, err_a, err_b, mean, std, z, p (d = errors A - errors B)."""
    if min_boundary < 1:
        raise ScoringError(f"min_boundary must be at least 1, not {min_boundary}")
    _check_same_test(align_a, align_b)
    segments = []
    for utt in align_a:
        segments += _segments(align_a[utt], align_b[utt], min_boundary)
    d = [ea - eb for _, ea, eb in segments]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    squares = sum((x - mean) ** 2 for x in d)
    if squares == 0.0:         # sc_stats: no spread -> sd and Z are 0 (even when the mean is not)
        std = z = 0.0
    else:
        std = math.sqrt(squares / (n - 1))
        z = mean / (std / math.sqrt(n))
    return {"n_segments": n, "n_sentences": len(align_a),
            "ref_words": sum(s[0] for s in segments),
            "err_a": sum(s[1] for s in segments), "err_b": sum(s[2] for s in segments),
            "mean": mean, "std": std, "z": z, "p": two_tailed_p(z)}


def two_tailed_p(z):
    """The two-tailed p of a standard normal statistic (what sc_stats' Z is tested against)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


_RESULTS = re.compile(r"MTCH_PR_RESULTS \(systems: .*\) \(# segs: (\d+)\) .*\(mean: (\S+)\) "
                      r"\(std dev: (\S+)\) \(Z Stat: (\S+)\)")


def run_sc_stats(sgml_a, sgml_b, workdir):
    """Run the real `sc_stats -p -t mapsswe -v` on two sclite SGML files (A first) in workdir,
    which keeps its report compare.stats.mapsswe (sc_stats has no option for the boundary: it is
    always 2 words). Returns the same keys as mapsswe (mean, std and z with the 3 decimals
    sc_stats prints; p from that z). When neither system makes a single error there is no segment
    and sc_stats would crash: it is not run, and the result is mapsswe's (Z = 0, p = 1)."""
    sc_stats = find_tool("sc_stats")
    title_a, align_a = read_sgml(sgml_a)
    title_b, align_b = read_sgml(sgml_b)
    if title_a == title_b:
        raise ScoringError(f"{sgml_a} and {sgml_b} are both titled {title_a!r}: sc_stats needs "
                           "distinct system titles")
    _check_same_test(align_a, align_b, sgml_a, sgml_b)
    os.makedirs(workdir, exist_ok=True)
    report = os.path.join(workdir, "compare.stats.mapsswe")
    if os.path.exists(report):
        os.remove(report)
    ours = mapsswe(align_a, align_b)
    if ours["n_segments"] == 0:
        write_atomic(report, f"sc_stats not run on {sgml_a} and {sgml_b}: neither system makes an error, so "
                     "there is no segment to test (sc_stats crashes on that). Z = 0, no difference.\n")
        return ours
    with open(sgml_a, "rb") as fa, open(sgml_b, "rb") as fb:
        piped = fa.read() + fb.read()
    r = subprocess.run([sc_stats, "-p", "-t", "mapsswe", "-v", "-n", "compare"], input=piped,
                       cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    text = ""
    if os.path.exists(report):
        with open(report, encoding="utf-8", errors="replace") as f:
            text = f.read()
    m = _RESULTS.search(text)
    if r.returncode != 0 or not m:
        raise ScoringError(f"sc_stats -t mapsswe failed on {sgml_a} and {sgml_b} in {workdir} "
                           f"(exit {r.returncode}): {r.stderr.decode(errors='replace')[-300:]}")
    seg = re.search(r"Number of Segments\s+(\d+)", text)
    sent = re.search(r"Number of Sentences\s+(\d+)", text)
    totals = re.search(r"Totals\s+(\d+)\s+(\d+)\s+(\d+)", text)
    if not seg or not sent or not totals:
        raise ScoringError(f"{report}: no segment counts (Number of Segments / Sentences, Totals) "
                           "in sc_stats' report")
    z = float(m.group(4))
    return {"n_segments": int(seg.group(1)), "n_sentences": int(sent.group(1)),
            "ref_words": int(totals.group(1)), "err_a": int(totals.group(2)),
            "err_b": int(totals.group(3)), "mean": float(m.group(2)), "std": float(m.group(3)),
            "z": z, "p": two_tailed_p(z)}
