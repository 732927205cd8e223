"""sclite scoring on hand-made transcripts whose error counts are known."""
import json
import os
import shutil

import pytest

from mpq_plugins.bin import score
from mpq_plugins.eval.scoring import ScoringError, parse_sum_avg, read_text, score_dir, to_units

pytestmark = pytest.mark.skipif(not (shutil.which("sclite") or os.path.exists("/usr/lib/sctk/bin/sclite")),
                                reason="sctk not installed")


def write(path, lines):
    path.write_text("".join(f"{k} {v}\n" for k, v in lines))
    return str(path)


@pytest.fixture
def data(tmp_path):
    ref = write(tmp_path / "ref", [("a_1", "the cat sat on the mat"), ("a_2", "hello world"),
                                   ("b_1", "one more word")])
    u2s = write(tmp_path / "utt2spk", [("a_1", "a"), ("a_2", "a"), ("b_1", "b")])
    return tmp_path, ref, u2s


def test_counts_by_hand(data):
    tmp, ref, u2s = data
    # a_1: 1 substitution (sat->sit), 1 deletion (the); a_2: 1 insertion; b_1: correct
    hyp = write(tmp / "hyp", [("a_1", "the cat sit on mat"), ("a_2", "hello big world"), ("b_1", "one more word")])
    r = score_dir(ref, hyp, u2s, str(tmp / "out"))
    w = r["wer"]
    assert (w["Snt"], w["Wrd"]) == (3, 11)
    assert w["Err"] == pytest.approx(100 * 3 / 11, abs=0.05)
    assert w["Sub"] == pytest.approx(100 / 11, abs=0.05) and w["Del"] == pytest.approx(100 / 11, abs=0.05)
    assert w["S.Err"] == pytest.approx(100 * 2 / 3, abs=0.05)
    assert r["cer"]["Wrd"] == sum(len(s) for s in ["the cat sat on the mat", "hello world", "one more word"])
    trn = (tmp / "out" / "score_wer" / "ref.trn").read_text().splitlines()
    assert trn[0] == "the cat sat on the mat (a-a_1)"
    assert (tmp / "out" / "score_wer" / "hyp.trn.sgml").exists()
    assert parse_sum_avg(str(tmp / "out" / "score_wer" / "result.txt")) == w


def test_missing_hypothesis_is_all_deletions(data):
    tmp, ref, u2s = data
    hyp = write(tmp / "hyp", [("a_1", "the cat sat on the mat"), ("b_1", "one more word")])
    r = score_dir(ref, hyp, u2s, str(tmp / "out"))
    assert r["missing"] == 1
    assert r["wer"]["Del"] == pytest.approx(100 * 2 / 11, abs=0.05)


def test_unknown_hypothesis_is_an_error(data):
    tmp, ref, u2s = data
    hyp = write(tmp / "hyp", [("a_1", "x"), ("zz_9", "who is this")])
    with pytest.raises(ScoringError, match="not in .*ref"):
        score_dir(ref, hyp, u2s, str(tmp / "out"))


def test_char_units():
    assert to_units(["ab", "c"], "char") == ["a", "b", "<space>", "c"]
    assert to_units(["ab", "c"], "word") == ["ab", "c"]


def test_read_text_is_the_kaldi_table_reader_with_scoring_errors(tmp_path):
    p = tmp_path / "text"
    p.write_text("a_1 the  cat\na_2 \n")
    assert read_text(str(p), allow_empty=True) == {"a_1": ["the", "cat"], "a_2": []}
    with pytest.raises(ScoringError, match=r"text:2: empty transcript for a_2$"):
        read_text(str(p))
    p.write_text("a_1 x\na_1 y\n")
    with pytest.raises(ScoringError, match=r"text:2: duplicate utterance a_1$"):
        read_text(str(p))
    p.write_text("a_1 x\n\n")
    with pytest.raises(ScoringError, match=r"text:2: empty line$"):
        read_text(str(p))
    p.write_bytes(b"a_1 x\na_2 caf\xe9\n")                           # Latin-1, not UTF-8
    with pytest.raises(ScoringError, match=r"text:2: not valid UTF-8"):
        read_text(str(p))


def test_score_cli_writes_scoring_json(data, capsys):
    tmp, ref, u2s = data
    datadir, decode = tmp / "data", tmp / "decode"
    datadir.mkdir()
    decode.mkdir()
    os.replace(ref, datadir / "text")
    os.replace(u2s, datadir / "utt2spk")
    write(decode / "text", [("a_1", "the cat sat on the mat"), ("b_1", "one more word")])
    score.main(["--data", str(datadir), "--decode_dir", str(decode)])
    assert json.loads((decode / "scoring.json").read_text()) == {"data": str(datadir), "missing": 1}
    out = capsys.readouterr()
    assert "1 utterances of" in out.err and f"score: {decode} WER 18.2% (3 sentences, 11 units)" in out.out
    write(decode / "text", [("zz_9", "who")])
    with pytest.raises(SystemExit, match="^score: .*not in"):
        score.main(["--data", str(datadir), "--decode_dir", str(decode)])
    with pytest.raises(SystemExit, match=r"^score: .*nodecode/text: missing \(stage 7 decodes the set into it\)$"):
        score.main(["--data", str(datadir), "--decode_dir", str(tmp / "nodecode")])


def _score_forced(data_dir, decode_dir, n):
    from mpq_plugins.eval.scoring import score_decode_dir
    for _ in range(n):
        os.utime(os.path.join(decode_dir, "text"))      # newer than its scores: scored again
        score_decode_dir(data_dir, decode_dir)


def test_a_decode_dir_is_scored_again_only_when_its_texts_change_and_by_one_process_at_a_time(data):
    """Two queues of the recipe score the float model's decodes beside each other: the second waits and
    finds them up to date (one removed the other's half-built score dir, and a queue's step failed)."""
    import multiprocessing
    import time

    from mpq_plugins.eval.scoring import score_decode_dir
    tmp, _, _ = data
    (tmp / "data").mkdir()
    shutil.copy(tmp / "ref", tmp / "data" / "text")
    shutil.copy(tmp / "utt2spk", tmp / "data" / "utt2spk")
    dec = tmp / "decode"
    dec.mkdir()
    write(dec / "text", [("a_1", "the cat sit on mat"), ("a_2", "hello big world"), ("b_1", "one more word")])
    first = score_decode_dir(str(tmp / "data"), str(dec))
    result = dec / "score_wer" / "result.txt"
    stamp = result.stat().st_mtime_ns
    again = score_decode_dir(str(tmp / "data"), str(dec))
    assert again.pop("up_to_date") and again == first and result.stat().st_mtime_ns == stamp
    time.sleep(0.01)
    write(dec / "text", [("a_1", "the cat sat on the mat"), ("a_2", "hello world"), ("b_1", "one more word")])
    assert score_decode_dir(str(tmp / "data"), str(dec))["wer"]["Err"] == 0 and result.stat().st_mtime_ns > stamp
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_score_forced, args=(str(tmp / "data"), str(dec), 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert parse_sum_avg(str(result))["Err"] == 0 and not list(dec.glob("*.tmp"))
