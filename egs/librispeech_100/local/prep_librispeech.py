"""Turn a LibriSpeech corpus into Kaldi data dirs (stage 1 of this recipe, local/data.sh).

    python local/prep_librispeech.py --corpus /data/LibriSpeech \\
        --sets train-clean-100,dev-clean,dev-other,test-clean,test-other --datadir data

Reads <corpus>/<set>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac and
<corpus>/<set>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt ("<utt-id> TRANSCRIPT" lines) and
writes <datadir>/<set with '-' turned to '_'>/{wav.scp,text,utt2spk,spk2utt}. wav.scp holds the
absolute .flac path (read directly with soundfile), text keeps LibriSpeech's upper-case transcripts
as they are, and the speaker id is <speaker>-<chapter>, so every utterance id starts with it.

Every set is checked before anything is written; each output is then staged, validated (every
flac must be readable audio) and only swapped in once all sets have passed, so a failed run
leaves no partial output dir and leaves earlier outputs untouched.
"""
import argparse
import os
import re
import shutil
import sys

try:
    from mpq_plugins.datadir import DataDirError, read_table, validate_datadir, write_datadir
except ModuleNotFoundError as e:
    if e.name != "mpq_plugins":
        raise
    sys.exit("prep_librispeech: cannot import mpq_plugins; run local/data.sh, or put the repository root on "
             "PYTHONPATH")

PROG = "prep_librispeech"
DEFAULT_SETS = "train-clean-100,dev-clean,dev-other,test-clean,test-other"
NUM_RE = re.compile(r"[0-9]+")
UTT_RE = re.compile(r"([0-9]+)-([0-9]+)-([0-9]+)")
MAX_SHOWN = 20


def _fail(problems):
    shown = problems[:MAX_SHOWN]
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    if len(shown) == 1 and not more:
        sys.exit(f"{PROG}: {shown[0]}")
    sys.exit(f"{PROG}: {len(problems)} problems:\n  " + "\n  ".join(shown) + more)


def read_transcripts(path, spk, chap, problems):
    """Parse one <spk>-<chap>.trans.txt ("utt-id TEXT" lines, a Kaldi text table); return
    {utt_id: (text, line_no)}, or None when the file cannot be read at all (bad bytes, empty line)."""
    try:
        rows = read_table(path)
    except DataDirError as e:
        problems.append(str(e))
        return None
    except OSError as e:
        problems.append(f"{path}: cannot read ({e.strerror})")
        return None
    if not rows:
        problems.append(f"{path}: transcript file is empty")
    out = {}
    for utt, text, n in rows:
        m = UTT_RE.fullmatch(utt)
        if not m:
            problems.append(f"{path}:{n}: malformed utterance id {utt!r} "
                            f"(expected {spk}-{chap}-<digits>)")
            continue
        if (m.group(1), m.group(2)) != (spk, chap):
            problems.append(f"{path}:{n}: utterance id {utt} does not belong to speaker {spk} "
                            f"chapter {chap}")
            continue
        if not text:
            problems.append(f"{path}:{n}: empty transcript for {utt}")
            continue
        if utt in out:
            problems.append(f"{path}:{n}: duplicate utterance id {utt} (first on line {out[utt][1]})")
            continue
        out[utt] = (text, n)
    return out


def scan_chapter(chap_dir, spk, chap, problems):
    """Return [(utt_id, spk_id, flac_path, text)] for one chapter dir."""
    trans_name = f"{spk}-{chap}.trans.txt"
    flacs = {}
    has_trans = False
    for entry in sorted(os.scandir(chap_dir), key=lambda e: e.name):
        name = entry.name
        if name.endswith(".flac"):
            utt = name[:-len(".flac")]
            m = UTT_RE.fullmatch(utt)
            if not m:
                problems.append(f"{entry.path}: malformed utterance id in file name "
                                f"(expected {spk}-{chap}-<digits>.flac)")
            elif (m.group(1), m.group(2)) != (spk, chap):
                problems.append(f"{entry.path}: utterance {utt} is in the wrong directory "
                                f"(speaker {spk} chapter {chap})")
            elif not entry.is_file():
                problems.append(f"{entry.path}: not a regular file")
            else:
                flacs[utt] = entry.path
        elif name.endswith(".trans.txt"):
            if name != trans_name:
                problems.append(f"{entry.path}: unexpected transcript file (expected {trans_name} "
                                f"in {chap_dir})")
            else:
                has_trans = True
        # anything else (READMEs, .DS_Store, ...) is not part of the data and is ignored
    trans_path = os.path.join(chap_dir, trans_name)
    if not has_trans:
        if flacs:
            problems.append(f"{trans_path}: missing (chapter has {len(flacs)} .flac files)")
        else:
            problems.append(f"{chap_dir}: chapter dir holds no .flac files and no {trans_name}")
        return []
    trans = read_transcripts(trans_path, spk, chap, problems)
    if trans is None:
        return []  # already reported; matching its flacs against nothing would only add noise
    utts = []
    for utt, (text, n) in trans.items():
        if utt not in flacs:
            problems.append(f"{trans_path}:{n}: no audio for {utt} ({chap_dir}/{utt}.flac missing)")
            continue
        utts.append((utt, f"{spk}-{chap}", flacs[utt], text))
    for utt, path in flacs.items():
        if utt not in trans:
            problems.append(f"{path}: no transcript line for {utt} in {trans_path}")
    return utts


def _subdirs(path, what, problems):
    """Numeric-named subdirectories of path; other dirs are reported, plain files ignored."""
    out = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if entry.name.startswith("."):
            continue
        if not NUM_RE.fullmatch(entry.name):
            problems.append(f"{entry.path}: malformed {what} id {entry.name!r} (expected digits)")
            continue
        out.append(entry)
    return out


def scan_set(corpus, name, problems):
    set_dir = os.path.join(corpus, name)
    if not os.path.isdir(set_dir):
        problems.append(f"{set_dir}: set directory does not exist" if not os.path.exists(set_dir)
                        else f"{set_dir}: not a directory")
        return []
    before = len(problems)
    utts = []
    for spk in _subdirs(set_dir, "speaker", problems):
        for chap in _subdirs(spk.path, "chapter", problems):
            utts.extend(scan_chapter(chap.path, spk.name, chap.name, problems))
    if not utts and len(problems) == before:
        problems.append(f"{set_dir}: no utterances found (expected <speaker>/<chapter>/*.flac)")
    return utts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="the LibriSpeech dir (holding train-clean-100/ ...)")
    p.add_argument("--sets", default=DEFAULT_SETS, help="comma-separated LibriSpeech set names")
    p.add_argument("--datadir", default="data", help="where the Kaldi data dirs go")
    a = p.parse_args(argv)

    corpus = os.path.abspath(a.corpus)
    if not os.path.isdir(corpus):
        sys.exit(f"{PROG}: corpus dir {a.corpus} does not exist (expected LibriSpeech's layout: "
                 "<corpus>/<set>/<speaker>/<chapter>/*.flac)")
    if any(c.isspace() for c in corpus):
        sys.exit(f"{PROG}: corpus path {corpus!r} contains whitespace, which wav.scp cannot hold")
    sets = [s.strip() for s in a.sets.split(",") if s.strip()]
    if not sets:
        sys.exit(f"{PROG}: --sets is empty")
    for s in sets:
        if "/" in s or s in (".", ".."):
            sys.exit(f"{PROG}: bad set name {s!r} (expected e.g. dev-clean)")
    outs = [s.replace("-", "_") for s in sets]
    if len(set(outs)) != len(outs):
        sys.exit(f"{PROG}: --sets names a set twice: {a.sets}")

    # 1. check every set before writing anything
    problems = []
    planned = [(s, out, scan_set(corpus, s, problems)) for s, out in zip(sets, outs)]
    if problems:
        _fail(problems)

    # 2. stage and validate each output (this reads every flac's header); 3. swap all in
    os.makedirs(a.datadir, exist_ok=True)
    staged = []
    try:
        for s, out, utts in planned:
            final = os.path.join(a.datadir, out)
            stage = os.path.join(a.datadir, f".{out}.prep")
            shutil.rmtree(stage, ignore_errors=True)
            staged.append(stage)
            write_datadir(stage, utts)
            try:
                n = validate_datadir(stage, check_audio=True)
            except DataDirError as e:
                problems.append(str(e).replace(stage, final))
                continue
            if n != len(utts):
                problems.append(f"{final}: wrote {len(utts)} utterances but validation counted {n}")
        if problems:
            _fail(problems)
        report = []
        for (s, out, utts), stage in zip(planned, staged):
            final = os.path.join(a.datadir, out)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(stage, final)
            n_spk = len({spk for _, spk, _, _ in utts})
            report.append(f"{PROG}: {s}: {len(utts)} utterances, {n_spk} speakers -> {final}")
    finally:
        for stage in staged:
            shutil.rmtree(stage, ignore_errors=True)
            shutil.rmtree(stage + ".tmp", ignore_errors=True)
    for line in report:
        print(line)


if __name__ == "__main__":
    main()
