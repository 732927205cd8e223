"""Scoring with NIST SCTK's sclite on ESPnet's trn conventions.

A trn line is "<tokens> (<speaker>-<utt-id>)"; sclite's "-i rm" id format groups by speaker.
WER scores words; CER scores characters, a space written as <space>.
Without SCTK, score_dir writes the same files with mpq_plugins.eval.pyscore (a pure-Python sclite).
"""
import fcntl
import json
import os
import subprocess
import sys

from mpq_plugins.datadir import DataDirError, built_dir, read_table, write_atomic
from mpq_plugins.eval import pyscore
from mpq_plugins.eval.sctk import ScoringError, find_tool, write_trn


def _rows(path):
    """The (key, value, line_no) rows of a Kaldi table (datadir.read_table), each key once."""
    try:
        rows = read_table(path)
    except DataDirError as e:
        raise ScoringError(str(e)) from None
    seen = set()
    for key, _, n in rows:
        if not key:
            raise ScoringError(f"{path}:{n}: no utterance id (the line starts with a blank)")
        if key in seen:
            raise ScoringError(f"{path}:{n}: duplicate utterance {key}")
        seen.add(key)
    return rows


def read_text(path, allow_empty=False):
    """{utt: [words]} of a Kaldi text file; an empty transcript is an error unless allow_empty
    (a hypothesis may be empty, a reference may not)."""
    out = {}
    for key, value, n in _rows(path):
        if not value and not allow_empty:
            raise ScoringError(f"{path}:{n}: empty transcript for {key}")
        out[key] = value.split()
    return out


def read_utt2spk(path):
    """{utt: speaker} of a Kaldi utt2spk file."""
    out = {}
    for key, value, n in _rows(path):
        if not value:
            raise ScoringError(f"{path}:{n}: no speaker for {key}")
        out[key] = value.split()[0]
    return out


def to_units(words, unit):
    if unit == "word":
        return words
    return ["<space>" if c == " " else c for c in " ".join(words)]


def parse_sum_avg(result_txt):
    """Return the Sum/Avg row of an sclite report as a dict."""
    with open(result_txt, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "Sum/Avg" in line:
                cells = [c.split() for c in line.split("|") if c.strip()]
                snt, wrd = (int(x) for x in cells[1])
                corr, sub, dele, ins, err, serr = (float(x) for x in cells[2])
                return {"Snt": snt, "Wrd": wrd, "Corr": corr, "Sub": sub, "Del": dele,
                        "Ins": ins, "Err": err, "S.Err": serr}
    raise ScoringError(f"{result_txt}: no Sum/Avg line (sclite failed?)")


def _trn_texts(texts, utt2spk, unit):
    """{"<speaker>-<utt>": units} in utterance order: what write_trn writes for sclite's "-i rm"."""
    return {f"{utt2spk[utt]}-{utt}": to_units(texts[utt], unit) for utt in sorted(texts)}


def score_dir(ref_text, hyp_text, utt2spk_file, outdir):
    """Score one decode dir with sclite; returns {"wer": row, "cer": row, "missing": n}."""
    ref = read_text(ref_text)
    hyp = read_text(hyp_text, allow_empty=True)
    unknown = sorted(set(hyp) - set(ref))
    if unknown:
        raise ScoringError(f"{hyp_text}: {len(unknown)} hypotheses for utterances not in {ref_text} "
                           f"(e.g. {unknown[0]}): decoded with another data dir?")
    missing = sorted(set(ref) - set(hyp))
    for utt in missing:  # scored as all deletions, as sclite does for an empty hypothesis
        hyp[utt] = []
    utt2spk = read_utt2spk(utt2spk_file)
    no_speaker = sorted(set(ref) - set(utt2spk))
    if no_speaker:
        raise ScoringError(f"{utt2spk_file}: no speaker for {len(no_speaker)} utterances of {ref_text} "
                           f"(e.g. {no_speaker[0]})")
    try:
        sclite = find_tool("sclite")
    except ScoringError:
        sclite = None  # the same files from the pure-Python stand-in, tested to agree with sclite
        print("scoring: sclite not found, scoring with the pure-Python fallback (mpq_plugins.eval.pyscore)",
              file=sys.stderr)
    out = {"missing": len(missing)}
    for unit, name in (("word", "score_wer"), ("char", "score_cer")):
        # built as <name>.tmp and swapped in when complete: a killed run leaves the earlier score dir (or
        # none), never a new result.txt beside an old or half-written alignment
        final = os.path.join(outdir, name)
        with built_dir(final) as d:
            ref_trn, hyp_trn = os.path.join(d, "ref.trn"), os.path.join(d, "hyp.trn")
            write_trn(ref_trn, _trn_texts(ref, utt2spk, unit))
            write_trn(hyp_trn, _trn_texts(hyp, utt2spk, unit))
            if sclite is None:
                pyscore.write_result(os.path.join(d, "result.txt"), ref_trn, hyp_trn)
                pyscore.write_sgml(os.path.join(d, "hyp.trn.sgml"), "hyp.trn", ref_trn, hyp_trn)
            else:
                with open(os.path.join(d, "result.txt"), "w") as f:
                    r = subprocess.run([sclite, "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm",
                                        "-o", "all", "stdout"], cwd=d, stdout=f, stderr=subprocess.PIPE)
                if r.returncode == 0:  # the alignments as SGML (hyp.trn.sgml), for sc_stats significance tests
                    r = subprocess.run([sclite, "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm",
                                        "-o", "sgml", "-O", "."], cwd=d,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if r.returncode != 0:
                    raise ScoringError(f"sclite failed in {final}: {r.stderr.decode(errors='replace')[-300:]}")
            row = parse_sum_avg(os.path.join(d, "result.txt"))
            n_ref = sum(len(to_units(v, unit)) for v in ref.values())
            if row["Wrd"] != n_ref or row["Snt"] != len(ref):
                raise ScoringError(f"{final}/result.txt counts {row['Snt']} sentences / {row['Wrd']} {unit}s, "
                                   f"but the reference has {len(ref)} / {n_ref}")
        out["wer" if unit == "word" else "cer"] = row
    return out


def score_decode_dir(data, decode_dir):
    """Score <decode_dir>/text against the data dir's text and utt2spk (score_dir) and write
    <decode_dir>/scoring.json, which the report reads for the utterances without a hypothesis.
    Scores newer than the three files (of the same data dir) are left as they are; a recipe scoring the same
    decode dir meanwhile (two queues both score the float model) is waited for, under a lock in the dir."""
    ref, utt2spk, hyp = os.path.join(data, "text"), os.path.join(data, "utt2spk"), os.path.join(decode_dir, "text")
    inputs = [ref, utt2spk, hyp]
    outputs = [os.path.join(decode_dir, n, "result.txt") for n in ("score_wer", "score_cer")]
    record = os.path.join(decode_dir, "scoring.json")
    if not os.path.isfile(hyp):
        raise ScoringError(f"{hyp}: missing (stage 7 decodes the set into it)")
    with open(os.path.join(decode_dir, ".score.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(os.path.exists(p) for p in inputs + outputs + [record]):
            with open(record) as f:
                earlier = json.load(f)
            newest = max(os.stat(p).st_mtime_ns for p in inputs)
            if earlier.get("data") == data and min(os.stat(p).st_mtime_ns for p in outputs + [record]) > newest:
                return {"wer": parse_sum_avg(outputs[0]), "cer": parse_sum_avg(outputs[1]),
                        "missing": earlier["missing"], "up_to_date": True}
        r = score_dir(ref, hyp, utt2spk, decode_dir)
        write_atomic(record, json.dumps({"data": data, "missing": r["missing"]}))
    return r
