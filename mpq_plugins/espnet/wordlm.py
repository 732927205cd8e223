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
FORMAT = "mpq-asr word n-gram 2"   # 2: one <s> per sentence, as ARPA files have (1 padded order-1)


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
        """sentences: iterables of words, all in vocab. As in SRILM and KenLM, a sentence is
        <s> w1 .. wn </s> with one <s>: the n-grams of the highest order, and the shorter ones that
        start with <s>, have raw counts; the other lower-order n-grams have Kneser-Ney continuation
        counts (how many distinct words precede them)."""
        if not 1 <= order <= 5:
            raise ValueError(f"n-gram order {order} is outside 1..5")
        vocab = sorted(set(vocab))
        known = set(vocab)
        raw = collections.Counter()
        for n_sent, words in enumerate(sentences, 1):
            for w in words:
                if w not in known:
                    raise ValueError(f"sentence {n_sent}: word {w!r} is not in the vocabulary")
            seq = [BOS] + list(words) + [EOS]
            for i in range(1, len(seq)):
                raw[tuple(seq[max(0, i - order + 1):i + 1])] += 1
        counts = {n: collections.defaultdict(dict) for n in range(1, order + 1)}
        for gram, c in raw.items():
            counts[len(gram)][gram[:-1]][gram[-1]] = c
        for n in range(order - 1, 0, -1):      # continuation counts from the order above
            cont = collections.Counter()
            for hist, nxt in counts[n + 1].items():
                for w in nxt:
                    cont[hist[1:] + (w,)] += 1
            for gram, c in cont.items():       # never starts with <s> (only a sentence's first token is)
                counts[n][gram[:-1]][gram[-1]] = c
        return cls(vocab, {n: dict(v) for n, v in counts.items()}, order)

    def save(self, path):
        data = {"format": FORMAT, "order": self.order, "vocab": self.words,
                "counts": {str(n): [[list(h), nxt] for h, nxt in table.items()]
                           for n, table in self.counts.items()}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} file (an older one? run stage 4 again)")
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

    def prob(self, hist, w):
        """P(w | hist) as one number (what `_probs` gives for all words at once)."""
        lower = self.prob(hist[1:], w) if hist else 1.0 / (len(self.words) + 1)
        nxt = self.counts.get(len(hist) + 1, {}).get(hist)
        if not nxt:
            return lower
        total = sum(nxt.values())
        return lower * DISCOUNT * len(nxt) / total + max(nxt.get(w, 0) - DISCOUNT, 0.0) / total

    def logprobs(self, history):
        """Natural-log probabilities (vector: words in vocab order, then </s>) after a word history."""
        hist = tuple(([BOS] + list(history))[-(self.order - 1):]) if self.order > 1 else ()
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

    # -- ARPA ---------------------------------------------------------------------------------
    def _backoff(self, hist):
        """The interpolation weight of the lower order after hist (ARPA's back-off weight)."""
        nxt = self.counts.get(len(hist) + 1, {}).get(hist)
        return DISCOUNT * len(nxt) / sum(nxt.values()) if nxt else 1.0

    def write_arpa(self, path):
        """Write the model as an ARPA back-off file with the same probabilities: a seen n-gram gets
        its interpolated probability and each context the weight of its lower order, so a reader
        that backs off (KenLM) computes exactly `logprobs`. Every vocabulary word is a unigram;
        <unk> gets log10 probability -99 (the vocabulary is closed)."""
        if self.order < 2:
            raise ValueError("an ARPA file for KenLM needs an n-gram order of at least 2 (train_word_lm --order)")
        log10 = lambda p: math.log10(p) if p > 0 else -99.0   # noqa: E731
        contexts = {n: set(self.counts.get(n + 1, {})) for n in range(1, self.order)}
        sections = [[(-99.0, "<unk>", None), (-99.0, BOS, (BOS,))] +
                    [(log10(self.prob((), w)), w, (w,)) for w in self.words + [EOS]]]
        for n in range(2, self.order + 1):
            sections.append([(log10(self.prob(hist, w)), " ".join(hist + (w,)), hist + (w,))
                             for hist in sorted(self.counts.get(n, {})) for w in sorted(self.counts[n][hist])])
        with open(path, "w", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for n, rows in enumerate(sections, 1):
                f.write(f"ngram {n}={len(rows)}\n")
            for n, rows in enumerate(sections, 1):
                f.write(f"\n\\{n}-grams:\n")
                for lp, text, gram in rows:
                    bo = gram is not None and n < self.order and gram in contexts[n]
                    f.write(f"{lp:.7f}\t{text}\t{math.log10(self._backoff(gram)):.7f}\n" if bo
                            else f"{lp:.7f}\t{text}\n")
            f.write("\n\\end\\\n")

    # -- the lexicon as a prefix tree over the sorted vocabulary ----------------------------
    def prefix_range(self, prefix):
        """[lo, hi) of the vocabulary words that start with prefix (empty when lo == hi)."""
        lo = bisect.bisect_left(self.words, prefix)
        hi = bisect.bisect_left(self.words, prefix + "\U0010ffff", lo)
        return lo, hi

    def is_word(self, s):
        return s in self.index
