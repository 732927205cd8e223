"""A closed-vocabulary word n-gram LM (interpolated Kneser-Ney) for character-level decoding.

The default corpus has a closed vocabulary, as a Kaldi lexicon does. A character model spells
words it has not learnt ("depotment"); this LM scores whole words and, through look-ahead, every
word prefix, so the beam search keeps only spellings of vocabulary words and ranks them by the
word LM:

- `NgramLM.train(sentences, vocab, order)` counts n-grams and gives `logprobs(history)`: the
  log-probability of every vocabulary word (and of the end of the sentence) after a history.
- `prefix_range(prefix)`: vocabulary words are kept sorted, so the words that start with a prefix
  are one slice; the look-ahead score of a prefix is the best log-probability in that slice.
- The ESPnet scorer that uses it is `mpq_plugins.lexicon_scorer.WordLMScorer`.

Saved as JSON (`save`/`load`): counts and vocabulary, nothing pickled.
"""
import bisect
import collections
import json
import math

import numpy as np

BOS, EOS = "<s>", "</s>"
DISCOUNT = 0.75


class NgramLM:
    def __init__(self, vocab, counts, order):
        """vocab: sorted list of words; counts: {n: {history tuple: {word: count}}} for n = 1..order."""
        self.words = list(vocab)
        if self.words != sorted(set(self.words)):
            raise ValueError("vocabulary must be sorted and without repeats")
        self.order = order
        self.index = {w: i for i, w in enumerate(self.words)}
        self.eos = len(self.words)            # column of the end of sentence
        self.counts = counts
        self._cache = {}

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, sentences, vocab, order=3):
        """sentences: iterables of words, all in vocab; counts of the highest order are raw, lower
        orders are Kneser-Ney continuation counts (how many distinct words precede the n-gram)."""
        if not 1 <= order <= 5:
            raise ValueError(f"n-gram order {order} is outside 1..5")
        vocab = sorted(set(vocab))
        known = set(vocab)
        raw = collections.Counter()
        for n_sent, words in enumerate(sentences, 1):
            for w in words:
                if w not in known:
                    raise ValueError(f"sentence {n_sent}: word {w!r} is not in the vocabulary")
            seq = [BOS] * (order - 1) + list(words) + [EOS]
            for i in range(order - 1, len(seq)):
                raw[tuple(seq[i - order + 1:i + 1])] += 1
        counts = {n: collections.defaultdict(dict) for n in range(1, order + 1)}
        for gram, c in raw.items():
            counts[order][gram[:-1]][gram[-1]] = c
        for n in range(order - 1, 0, -1):      # continuation counts from the order above
            cont = collections.Counter()
            for hist, nxt in counts[n + 1].items():
                for w in nxt:
                    cont[hist[1:] + (w,)] += 1
            for gram, c in cont.items():
                counts[n][gram[:-1]][gram[-1]] = c
        return cls(vocab, {n: dict(v) for n, v in counts.items()}, order)

    def save(self, path):
        data = {"format": "mpq-asr word n-gram 1", "order": self.order, "vocab": self.words,
                "counts": {str(n): [[list(h), nxt] for h, nxt in table.items()]
                           for n, table in self.counts.items()}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format") != "mpq-asr word n-gram 1":
                raise ValueError("not an mpq-asr word n-gram file")
            counts = {int(n): {tuple(h): nxt for h, nxt in rows} for n, rows in data["counts"].items()}
            return cls(data["vocab"], counts, int(data["order"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot read the word LM: {e}") from e

    # -- probabilities ----------------------------------------------------------------------
    def _probs(self, hist):
        """Probability vector over words + </s> after hist (a tuple of at most order-1 words)."""
        if hist in self._cache:
            return self._cache[hist]
        n = len(hist) + 1
        if n == 1:
            lower = np.full(len(self.words) + 1, 1.0 / (len(self.words) + 1))
        else:
            lower = self._probs(hist[1:])
        nxt = self.counts.get(n, {}).get(hist)
        if not nxt:
            p = lower
        else:
            total = sum(nxt.values())
            p = lower * (DISCOUNT * len(nxt) / total)
            for w, c in nxt.items():
                p[self.eos if w == EOS else self.index[w]] += (c - DISCOUNT) / total
        if len(self._cache) > 200000:
            self._cache.clear()
        self._cache[hist] = p
        return p

    def logprobs(self, history):
        """Natural-log probabilities (vector: words in vocab order, then </s>) after a word history."""
        hist = tuple(([BOS] * (self.order - 1) + list(history))[len(history):]) if self.order > 1 else ()
        key = ("log",) + hist
        if key not in self._cache:
            self._cache[key] = np.log(self._probs(hist))
        return self._cache[key]

    def sentence_logprob(self, words):
        total, hist = 0.0, []
        for w in list(words) + [EOS]:
            lp = self.logprobs(hist)
            total += lp[self.eos if w == EOS else self.index[w]]
            hist.append(w)
        return total

    def perplexity(self, sentences):
        lp, n = 0.0, 0
        for words in sentences:
            lp += self.sentence_logprob(words)
            n += len(words) + 1
        return math.exp(-lp / max(n, 1))

    # -- the lexicon as a prefix tree over the sorted vocabulary ----------------------------
    def prefix_range(self, prefix):
        """[lo, hi) of the vocabulary words that start with prefix (empty when lo == hi)."""
        lo = bisect.bisect_left(self.words, prefix)
        hi = bisect.bisect_left(self.words, prefix + "\U0010ffff", lo)
        return lo, hi

    def is_word(self, s):
        return s in self.index
