"""Sentence pool for the synthetic corpus.

Sentences come from WordNet glosses (definitions and their quoted examples) and from the
fortune cookie files. They are normalised (lower case, punctuation stripped, no digits), kept
at 5-14 words, and restricted to a closed vocabulary: the most frequent words of the pool that
the CMU pronouncing dictionary shipped with festival knows, so every TTS engine can say them.
"""
import collections
import glob
import os
import re

WORDNET_DIR = "/usr/share/wordnet"
FORTUNE_DIR = "/usr/share/games/fortunes"
CMUDICT = "/usr/share/festival/dicts/cmu/cmudict-0.4.out"

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def normalise(sentence):
    """Lower-case words only, or None when the sentence holds digits or odd symbols."""
    s = sentence.lower().replace("\u2019", "'")
    if re.search(r"[0-9_@#$%&*=+<>/\\|~^]", s):
        return None
    s = re.sub(r"[-\u2013\u2014]", " ", s)
    s = re.sub(r"[.,;:!?\"()\[\]{}`]", " ", s)
    words = s.split()
    out = []
    for w in words:
        w = w.strip("'")
        if not w:
            continue
        if not _WORD.fullmatch(w):
            return None
        out.append(w)
    return out


def wordnet_sentences(wordnet_dir=WORDNET_DIR):
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(wordnet_dir, "data." + pos)
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                gloss = line.split(" | ", 1)[1].strip()
                for part in re.split(r";\s*", gloss):
                    part = part.strip().strip('"').strip()
                    if part:
                        yield part


def fortune_sentences(fortune_dir=FORTUNE_DIR):
    for path in sorted(glob.glob(os.path.join(fortune_dir, "*.u8"))):
        if "off" in os.path.basename(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for entry in text.split("\n%\n"):
            flat = " ".join(entry.split())
            for sent in re.split(r"(?<=[.!?])\s+", flat):
                yield sent


def cmudict_words(path=CMUDICT):
    words = set()
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith('("'):
                words.add(line[2:line.index('"', 2)])
    return words


def sentence_pool(vocab_size=3000, min_words=5, max_words=14, dictionary=None):
    """Return (sentences, vocabulary): unique normalised sentences in a stable order."""
    dictionary = cmudict_words() if dictionary is None else dictionary
    cands = []
    seen = set()
    for source in (wordnet_sentences(), fortune_sentences()):
        for raw in source:
            words = normalise(raw)
            if not words or not min_words <= len(words) <= max_words:
                continue
            key = " ".join(words)
            if key not in seen:
                seen.add(key)
                cands.append(words)
    counts = collections.Counter(w for ws in cands for w in ws if w in dictionary)
    vocab = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]}
    sentences = [" ".join(ws) for ws in cands if all(w in vocab for w in ws)]
    return sentences, sorted(vocab)
