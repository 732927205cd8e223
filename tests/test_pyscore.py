"""mpq_plugins.eval.pyscore, the pure-Python sclite / sc_stats: hand-worked cases, then agreement with
the real SCTK on the same inputs (skipped when SCTK is not installed)."""
import math
import os
import random
import re
import shutil
import subprocess

import pytest

from mpq_plugins.eval import pyscore, scoring, sctk
from mpq_plugins.eval.scoring import parse_sum_avg, score_dir
from mpq_plugins.eval.sctk import ScoringError

HAVE_SCTK = all(shutil.which(t) or os.path.exists(f"/usr/lib/sctk/bin/{t}") for t in ("sclite", "sc_stats"))
needs_sctk = pytest.mark.skipif(not HAVE_SCTK, reason="SCTK (sclite, sc_stats) not installed: "
                                "nothing to compare the pure-Python scorer with")


def ops(path):
    return " ".join(op for op, _, _ in path)


# ---------------------------------------------------------------------------------------------
# By hand

@pytest.mark.parametrize("ref, hyp, expected", [
    ("a b c", "c a b", "I C C D"),     # ties: cost 6 either way; sclite keeps I..D, not S S S (12)
    ("a a", "a", "D C"),               # the deletion is the first "a", not the second
    ("a b", "b a", "D C I"),           # D C I, I C D and S S cost 6, 6, 8: the insertion wins at the end
    ("a b", "", "D D"),
    ("", "x y", "I I"),
    ("", "", ""),
    ("a", "b", "S"),
    ("a", "a", "C"),
    ("a b", "x a b", "I C C"),
    ("a b", "a b x", "C C I"),
    ("a b c", "a x c", "C S C"),
    ("a", "b a", "I C"),
])
def test_align_by_hand(ref, hyp, expected):
    path = pyscore.align(ref.split(), hyp.split())
    assert ops(path) == expected
    assert [r for _, r, _ in path if r is not None] == ref.split()
    assert [h for _, _, h in path if h is not None] == hyp.split()


# A tiny two-system test set, worked by hand (min_boundary 2: a segment closes after 2 words that
# both systems have right, and starts 2 such words before its first error).
HAND_REF = {"s1-u1": "a b c d e f g h", "s1-u2": "a b c d", "s2-u3": "a b", "s2-u4": "a b c",
            "s2-u5": "a b c"}
HAND_A = {"s1-u1": "a b x d e f g h",   # S at c: segment a..e (5 words), errors 1 / 0
          "s1-u2": "a b c d",           # B deletes b: segment a..d (4 words), errors 0 / 1
          "s2-u3": "x y",               # both err up to the end: segment a b, errors 2 / 1
          "s2-u4": "a b c",             # B inserts z at the end: segment b c z, errors 0 / 1
          "s2-u5": "z a b c"}           # A inserts z at the start: segment z a b, errors 1 / 0
HAND_B = {"s1-u1": "a b c d e f g h", "s1-u2": "a c d", "s2-u3": "x b", "s2-u4": "a b c z",
          "s2-u5": "a b c"}
# d = A - B per segment: 1, -1, 1, -1, 1; mean 0.2; squares 3 * 0.64 + 2 * 1.44 = 4.8;
# sd = sqrt(4.8 / 4); Z = 0.2 / (sd / sqrt 5)
HAND_Z = 0.2 / (math.sqrt(1.2) / math.sqrt(5))


def write_set(tmp_path, ref, hyps):
    """Write ref.trn and one trn per system (name -> {utt: words}), as strings or lists."""
    def words(v):
        return v.split() if isinstance(v, str) else v
    sctk.write_trn(str(tmp_path / "ref.trn"), {u: words(v) for u, v in ref.items()})
    for name, hyp in hyps.items():
        sctk.write_trn(str(tmp_path / f"{name}.trn"), {u: words(v) for u, v in hyp.items()})


def test_counts_and_mapsswe_by_hand(tmp_path):
    write_set(tmp_path, HAND_REF, {"a": HAND_A, "b": HAND_B})
    a = pyscore.write_sgml(str(tmp_path / "a.sgml"), "a", str(tmp_path / "ref.trn"), str(tmp_path / "a.trn"))
    b = pyscore.write_sgml(str(tmp_path / "b.sgml"), "b", str(tmp_path / "ref.trn"), str(tmp_path / "b.trn"))
    assert ops(a["s2-u5"]) == "I C C C" and ops(b["s1-u2"]) == "C D C C"
    assert pyscore.summarize(a) == {"snt": 5, "wrd": 20, "C": 17, "S": 3, "D": 0, "I": 1, "serr": 3}
    pyscore.write_result(str(tmp_path / "a.txt"), str(tmp_path / "ref.trn"), str(tmp_path / "a.trn"))
    assert parse_sum_avg(str(tmp_path / "a.txt")) == {"Snt": 5, "Wrd": 20, "Corr": 85.0, "Sub": 15.0,
                                                      "Del": 0.0, "Ins": 5.0, "Err": 20.0, "S.Err": 60.0}
    r = pyscore.mapsswe(a, b)
    assert (r["n_segments"], r["ref_words"], r["err_a"], r["err_b"]) == (5, 15, 4, 3)
    assert r["mean"] == pytest.approx(0.2) and r["std"] == pytest.approx(math.sqrt(1.2))
    assert r["z"] == pytest.approx(HAND_Z) and r["p"] == pytest.approx(math.erfc(HAND_Z / math.sqrt(2)))
    # sc_stats' rule for no spread: sd and Z are 0 even with a nonzero mean
    same = pyscore.mapsswe({"s1-u1": a["s1-u1"]}, {"s1-u1": b["s1-u1"]})
    assert (same["n_segments"], same["mean"], same["std"], same["z"], same["p"]) == (1, 1.0, 0.0, 0.0, 1.0)
    # no segment at all (both systems right everywhere): no evidence, Z = 0
    nothing = pyscore.mapsswe({"s1-u1": b["s1-u1"]}, {"s1-u1": b["s1-u1"]})
    assert (nothing["n_segments"], nothing["z"], nothing["p"]) == (0, 0.0, 1.0)


def test_utterance_errors_are_read_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    from mpq_plugins.eval import significance
    write_set(tmp_path, HAND_REF, {"a": HAND_A, "b": HAND_B})
    sgml = str(tmp_path / "s.sgml")
    pyscore.write_sgml(sgml, "s", str(tmp_path / "ref.trn"), str(tmp_path / "a.trn"))
    first = significance.utterance_errors(sgml)
    assert sum(e for e, _ in first.values()) == 4 and sum(w for _, w in first.values()) == 20
    first["s1-u1"] = (99, 99)                                  # a caller's copy: the cache is not changed
    reads = []
    real = pyscore.read_sgml
    monkeypatch.setattr(pyscore, "read_sgml", lambda p: reads.append(p) or real(p))
    assert significance.utterance_errors(sgml)["s1-u1"] != (99, 99) and reads == []
    pyscore.write_sgml(sgml, "s", str(tmp_path / "ref.trn"), str(tmp_path / "b.trn"))   # rescored: read again
    os.utime(sgml, ns=(1, 1))
    assert sum(e for e, _ in significance.utterance_errors(sgml).values()) == 3 and len(reads) == 1


def test_mismatched_systems_are_refused(tmp_path):
    write_set(tmp_path, HAND_REF, {"a": HAND_A})
    a = pyscore.align_trn(str(tmp_path / "ref.trn"), str(tmp_path / "a.trn"))
    fewer = {u: p for u, p in a.items() if u != "s1-u1"}
    with pytest.raises(ScoringError, match="not on the same utterances"):
        pyscore.mapsswe(a, fewer)
    other = dict(a, **{"s2-u3": pyscore.align(["q"], ["q"])})
    with pytest.raises(ScoringError, match="different reference words"):
        pyscore.mapsswe(a, other)
    sctk.write_trn(str(tmp_path / "x.trn"), {"s9-u9": ["who"]})
    with pytest.raises(ScoringError, match="not in"):
        pyscore.align_trn(str(tmp_path / "ref.trn"), str(tmp_path / "x.trn"))


def test_rounding_and_reading_like_sclite(tmp_path):
    assert pyscore.sclite_round(pyscore.sclite_pct(1, 16)) == 6.3     # "%.1f" % 6.25 would say 6.2
    assert pyscore.sclite_round(pyscore.sclite_pct(7, 80)) == 8.8
    assert pyscore.sclite_round(pyscore.sclite_pct(0, 5)) == 0.0
    (tmp_path / "x.trn").write_text("DON'T Stop\tNow (SPK_A-Utt1)\n\n;; a comment\n (spk_a-u2)\n")
    assert sctk.read_trn(str(tmp_path / "x.trn")) == {"spk_a-utt1": ["don't", "stop", "now"],
                                                      "spk_a-u2": []}
    assert sctk.speaker_of("spk_a-utt1") == "spk_a" and sctk.speaker_of("spk_b") == "spk"


# ---------------------------------------------------------------------------------------------
# Against the real SCTK

# Edge cases, one utterance each (speakers interleave on purpose)
EDGE_REF = {
    "s1-e01": "the cat sat", "s1-e02": "one two three", "s2-e03": "one two three",
    "s2-e04": "one two three", "s1-e05": "a b c", "s2-e06": "a a", "s3-e07": "word",
    "s3-e08": "word", "s3-e09": "word", "s1-e10": "x x x x", "s2-e11": "a b",
    "s3-e12": "it's Don't STOP", "s1-e13": "a b c d e f", "s2-e14": "",
}
EDGE_A = {
    "s1-e01": "",                        # empty hypothesis
    "s1-e02": "zero one two three",      # insertion at the start
    "s2-e03": "one two three four",      # insertion at the end
    "s2-e04": "one two three",           # all correct
    "s1-e05": "c a b", "s2-e06": "a", "s2-e11": "b a",   # ties
    "s3-e07": "word", "s3-e08": "", "s3-e09": "other",   # one-word utterances
    "s1-e10": "x x", "s3-e12": "its don't stop", "s1-e13": "a x c d y f",
    "s2-e14": "hello",                   # empty reference
}
EDGE_B = {
    "s1-e01": "the cat sat", "s1-e02": "one two three", "s2-e03": "one two three",
    "s2-e04": "one two three", "s1-e05": "a b c d", "s2-e06": "a a a", "s2-e11": "a b",
    "s3-e07": "words", "s3-e08": "word", "s3-e09": "word", "s1-e10": "x y x x x",
    "s3-e12": "It's don't stop now", "s1-e13": "a b c d e f", "s2-e14": "",
}


def random_set(seed, n=40):
    """n utterances over 6 words, with random substitutions, deletions, insertions (some at the
    ends) and a few empty hypotheses, for two systems."""
    rng = random.Random(seed)
    vocab = "a b c d e f".split()

    def edit(ref):
        p = rng.choice([0.0, 0.1, 0.3, 0.6])
        out = [rng.choice(vocab)] if rng.random() < 0.3 else []
        for w in ref:
            x = rng.random()
            if x < p / 3:
                continue
            out += [rng.choice(vocab)] if x < 2 * p / 3 else [w, rng.choice(vocab)] if x < p else [w]
        out += [rng.choice(vocab)] if rng.random() < 0.3 else []
        return [] if rng.random() < 0.05 else out

    ref, a, b = {}, {}, {}
    for i in range(n):
        utt = f"r{rng.randint(0, 3)}-{i:03d}"
        ref[utt] = [rng.choice(vocab) for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 12, 20]))]
        a[utt], b[utt] = edit(ref[utt]), edit(ref[utt])
    return ref, a, b


def sclite(d, hyp, *outputs):
    tool = sctk.find_tool("sclite")
    r = subprocess.run([tool, "-r", "ref.trn", "trn", "-h", hyp, "trn", "-i", "rm", "-o", *outputs,
                        "-O", "."], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()


def speaker_rows(path):
    rows = {}
    with open(path) as f:
        for line in f:
            cells = [c.split() for c in line.split("|") if c.strip()]
            if len(cells) == 3 and len(cells[1]) == 2 and cells[1][0].isdigit():
                rows[cells[0][0]] = cells[1:]
    return rows


def check_against_sctk(d, ref, a, b):
    """Score systems a and b with sclite and with pyscore; everything must agree."""
    write_set(d, ref, {"a": a, "b": b})
    ours = {}
    for name in "ab":
        sclite(str(d), f"{name}.trn", "sgml", "sum")
        trn = str(d / f"{name}.trn")
        ours[name] = pyscore.write_sgml(str(d / f"{name}.ours.sgml"), f"{name}.trn", str(d / "ref.trn"), trn)
        title, theirs = pyscore.read_sgml(str(d / f"{name}.trn.sgml"))
        assert title == f"{name}.trn"
        # the same alignment, utterance by utterance (so the same C/S/D/I counts) ...
        assert theirs == ours[name]
        assert pyscore.read_sgml(str(d / f"{name}.ours.sgml")) == (title, theirs)
        # ... the same file, but for the creation date ...
        with open(d / f"{name}.trn.sgml") as f1, open(d / f"{name}.ours.sgml") as f2:
            assert f1.read().split("\n")[1:] == f2.read().split("\n")[1:]
        # ... and the same report, speaker by speaker
        pyscore.write_result(str(d / f"{name}.ours.txt"), str(d / "ref.trn"), trn)
        assert parse_sum_avg(str(d / f"{name}.ours.txt")) == parse_sum_avg(str(d / f"{name}.trn.sys"))
        assert speaker_rows(d / f"{name}.ours.txt") == speaker_rows(d / f"{name}.trn.sys")
    real = pyscore.run_sc_stats(str(d / "a.trn.sgml"), str(d / "b.trn.sgml"), str(d / "sc_stats"))
    mine = pyscore.mapsswe(ours["a"], ours["b"])
    for k in ("n_segments", "n_sentences", "ref_words", "err_a", "err_b"):
        assert mine[k] == real[k], k
    for k in ("mean", "std", "z"):
        assert mine[k] == pytest.approx(real[k], abs=1e-3), k
    # sc_stats reads our SGML exactly as it reads sclite's
    assert pyscore.run_sc_stats(str(d / "a.ours.sgml"), str(d / "b.ours.sgml"),
                                str(d / "sc_stats_ours")) == real
    return mine


@needs_sctk
def test_hand_set_agrees_with_sctk(tmp_path):
    r = check_against_sctk(tmp_path, HAND_REF, HAND_A, HAND_B)
    assert r["z"] == pytest.approx(HAND_Z)
    r = check_against_sctk(tmp_path, HAND_REF, {"s1-u1": "a b x d e f g h"}, {"s1-u1": "a b c d e f g h"})
    assert (r["n_segments"], r["std"], r["z"]) == (1, 0.0, 0.0)


@needs_sctk
def test_edge_cases_agree_with_sctk(tmp_path):
    check_against_sctk(tmp_path, EDGE_REF, EDGE_A, EDGE_B)
    check_against_sctk(tmp_path, EDGE_REF, EDGE_B, EDGE_A)   # MAPSSWE is not symmetric in its walk


@needs_sctk
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sets_agree_with_sctk(tmp_path, seed):
    check_against_sctk(tmp_path, *random_set(seed))


@needs_sctk
def test_run_sc_stats_refusals(tmp_path):
    write_set(tmp_path, HAND_REF, {"a": HAND_A, "b": {u: HAND_B[u] for u in list(HAND_B)[1:]}, "c": HAND_REF})
    for name in "abc":
        sclite(str(tmp_path), f"{name}.trn", "sgml")
    a, b, c = (str(tmp_path / f"{n}.trn.sgml") for n in "abc")
    with pytest.raises(ScoringError, match=r"a\.trn\.sgml.*b\.trn\.sgml.*not on the same utterances"):
        pyscore.run_sc_stats(a, b, str(tmp_path / "w"))
    with pytest.raises(ScoringError, match="both titled"):
        pyscore.run_sc_stats(a, a, str(tmp_path / "w"))
    shutil.copy(c, tmp_path / "c2.sgml")
    text = (tmp_path / "c2.sgml").read_text()
    (tmp_path / "c2.sgml").write_text(re.sub(r'title="[^"]*"', 'title="c2"', text, count=1))
    # two error-free systems: no segment, on which sc_stats would crash; it is not run
    r = pyscore.run_sc_stats(c, str(tmp_path / "c2.sgml"), str(tmp_path / "w"))
    assert (r["n_segments"], r["z"], r["p"]) == (0, 0.0, 1.0)
    assert "not run" in (tmp_path / "w" / "compare.stats.mapsswe").read_text()
    shutil.copy(a, tmp_path / "a2.sgml")
    (tmp_path / "a2.sgml").write_text((tmp_path / "a2.sgml").read_text().replace('C,"a","a"', 'X,"a","a"'))
    with pytest.raises(ScoringError, match="a2.sgml.*cannot parse"):
        pyscore.run_sc_stats(str(tmp_path / "a2.sgml"), c, str(tmp_path / "w"))


def write_kaldi(path, texts):
    path.write_text("".join(f"{k} {v}\n" for k, v in texts.items()))
    return str(path)


@needs_sctk
def test_score_dir_without_sclite_matches_sclite(tmp_path, monkeypatch, capsys):
    ref, a, _ = random_set(7, n=30)
    ref.update({"r9-x1": ["hello", "world"], "r9-x2": ["one"]})
    a.update({"r9-x1": ["HELLO", "big", "world"]})           # r9-x2 missing: scored as empty
    a = {u: w for u, w in a.items() if w or u.endswith("0")}  # some more missing hypotheses
    ref_f = write_kaldi(tmp_path / "text", {u: " ".join(w) for u, w in ref.items()})
    hyp_f = write_kaldi(tmp_path / "hyp", {u: " ".join(w) for u, w in a.items()})
    u2s = write_kaldi(tmp_path / "utt2spk", {u: u.split("-")[0] for u in ref})
    real = score_dir(ref_f, hyp_f, u2s, str(tmp_path / "sclite"))
    assert "fallback" not in capsys.readouterr().err

    find_tool = scoring.find_tool

    def no_sclite(name):
        if name == "sclite":
            raise ScoringError("sclite not found: hidden by the test")
        return find_tool(name)
    monkeypatch.setattr(scoring, "find_tool", no_sclite)
    ours = score_dir(ref_f, hyp_f, u2s, str(tmp_path / "py"))
    assert "pure-Python fallback" in capsys.readouterr().err
    assert ours == real and ours["missing"] > 1
    for unit in ("score_wer", "score_cer"):
        for f in ("ref.trn", "hyp.trn"):
            assert (tmp_path / "py" / unit / f).read_text() == (tmp_path / "sclite" / unit / f).read_text()
        row = real["wer" if unit == "score_wer" else "cer"]
        assert parse_sum_avg(str(tmp_path / "py" / unit / "result.txt")) == row
        assert (pyscore.read_sgml(str(tmp_path / "py" / unit / "hyp.trn.sgml"))
                == pyscore.read_sgml(str(tmp_path / "sclite" / unit / "hyp.trn.sgml")))
