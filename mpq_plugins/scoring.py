"""Scoring with NIST SCTK's sclite on ESPnet's trn conventions.

A trn line is "<tokens> (<speaker>-<utt-id>)"; sclite's "-i rm" id format groups by speaker.
WER scores words; CER scores characters, a space written as <space>.
Without SCTK, score_dir writes the same files with mpq_plugins.pyscore (a pure-Python sclite).
"""
import os
import shutil
import subprocess
import sys

SCLITE_DIRS = ["/usr/lib/sctk/bin", "/usr/bin", "/usr/local/bin"]


class ScoringError(Exception):
    pass


def find_tool(name):
    found = shutil.which(name)
    if found:
        return found
    for d in SCLITE_DIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise ScoringError(f"{name} not found: install Debian's sctk package (apt-get install sctk)")


def read_text(path, allow_empty=False):
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            key, _, value = line.rstrip("\n").partition(" ")
            if not key:
                raise ScoringError(f"{path}:{n}: empty line")
            if key in out:
                raise ScoringError(f"{path}:{n}: duplicate utterance {key}")
            if not value.strip() and not allow_empty:
                raise ScoringError(f"{path}:{n}: empty transcript for {key}")
            out[key] = value.split()
    return out


def to_units(words, unit):
    if unit == "word":
        return words
    return ["<space>" if c == " " else c for c in " ".join(words)]


def write_trn(path, texts, utt2spk, unit):
    with open(path, "w", encoding="utf-8") as f:
        for utt in sorted(texts):
            f.write(f"{' '.join(to_units(texts[utt], unit))} ({utt2spk[utt]}-{utt})\n")


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
    utt2spk = {k: v[0] for k, v in read_text(utt2spk_file).items()}
    try:
        sclite = find_tool("sclite")
    except ScoringError:
        sclite = None  # the same files from the pure-Python stand-in, tested to agree with sclite
        print("scoring: sclite not found, scoring with the pure-Python fallback (mpq_plugins.pyscore)",
              file=sys.stderr)
    out = {"missing": len(missing)}
    for unit, name in (("word", "score_wer"), ("char", "score_cer")):
        d = os.path.join(outdir, name)
        os.makedirs(d, exist_ok=True)
        write_trn(os.path.join(d, "ref.trn"), ref, utt2spk, unit)
        write_trn(os.path.join(d, "hyp.trn"), hyp, utt2spk, unit)
        if sclite is None:
            from mpq_plugins import pyscore
            ref_trn, hyp_trn = os.path.join(d, "ref.trn"), os.path.join(d, "hyp.trn")
            pyscore.write_result(os.path.join(d, "result.txt.tmp"), ref_trn, hyp_trn)
            pyscore.write_sgml(os.path.join(d, "hyp.trn.sgml"), "hyp.trn", ref_trn, hyp_trn)
        else:
            with open(os.path.join(d, "result.txt.tmp"), "w") as f:
                r = subprocess.run([sclite, "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm",
                                    "-o", "all", "stdout"], cwd=d, stdout=f, stderr=subprocess.PIPE)
            if r.returncode == 0:  # the alignments as SGML (hyp.trn.sgml), for sc_stats significance tests
                r = subprocess.run([sclite, "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm",
                                    "-o", "sgml", "-O", "."], cwd=d,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if r.returncode != 0:
                raise ScoringError(f"sclite failed in {d}: {r.stderr.decode(errors='replace')[-300:]}")
        os.replace(os.path.join(d, "result.txt.tmp"), os.path.join(d, "result.txt"))
        row = parse_sum_avg(os.path.join(d, "result.txt"))
        n_ref = sum(len(to_units(v, unit)) for v in ref.values())
        if row["Wrd"] != n_ref or row["Snt"] != len(ref):
            raise ScoringError(f"{d}/result.txt counts {row['Snt']} sentences / {row['Wrd']} {unit}s, "
                               f"but the reference has {len(ref)} / {n_ref}")
        out["wer" if unit == "word" else "cer"] = row
    return out
