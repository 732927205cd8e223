"""What the scorers share: NIST SCTK's trn files, finding SCTK's tools, and the error they raise.

A trn line is "w1 w2 ... (utt_id)". mpq_plugins.eval.scoring and mpq_plugins.eval.pyscore both
build on this module (and scoring on pyscore, never the other way round).
"""
import os
import re
import shutil

from mpq_plugins.datadir import write_atomic

SCLITE_DIRS = ["/usr/lib/sctk/bin", "/usr/bin", "/usr/local/bin"]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_BLANKS = re.compile(r"[ \t\n\r\f\v]+")   # C isspace(): what sclite splits words on


class ScoringError(Exception):
    pass


def find_tool(name):
    """The path of an SCTK tool (sclite, sc_stats): on PATH or where Debian's sctk installs it."""
    found = shutil.which(name)
    if found:
        return found
    for d in SCLITE_DIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise ScoringError(f"{name} not found: install Debian's sctk package (apt-get install sctk)")


def speaker_of(utt_id):
    """sclite's "-i rm" speaker: the id up to its first "-" (or, lacking one, its first "_")."""
    for sep in "-_":
        if sep in utt_id:
            return utt_id.split(sep, 1)[0]
    raise ScoringError(f"utterance id {utt_id!r} has no '-' or '_' to find the speaker by")


def read_trn(path):
    """Read a trn file as sclite does: {utt_id: [words]} in file order, the id without its
    parentheses, everything lowercased (ASCII letters: sclite without -s is case-insensitive).
    Empty lines and ";;" comments are skipped."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.translate(_ASCII_LOWER)
            if not line.strip() or line.startswith(";;"):
                continue
            left, right = line.rfind("("), line.rfind(")")
            if left < 0 or right < left:
                raise ScoringError(f"{path}:{n}: no utterance id '(...)' at the end of the line")
            utt = line[left + 1:right]
            if utt in out:
                raise ScoringError(f"{path}:{n}: utterance ({utt}) appears twice")
            out[utt] = [w for w in _BLANKS.split(line[:left]) if w]
    return out


def write_trn(path, texts):
    """Write {utt_id: [words]} as trn lines "w1 w2 (utt_id)", in the dict's order."""
    write_atomic(path, "".join(f"{' '.join(words)} ({utt})\n" for utt, words in texts.items()))
