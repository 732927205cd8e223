"""Train the word n-gram LM (interpolated Kneser-Ney) used in decoding.

    python -m mpq_plugins.bin.train_word_lm --text data/local/corpus/lm_train.txt \
        --valid data/dev/text --order 3 --out exp/wordlm_3gram/lm.json [--vocab data/local/corpus/vocab.txt]

--text and --valid are Kaldi text files (utt-id words...); with --text_format plain, --text is a
corpus with one sentence a line and no ids (e.g. LibriSpeech's LM text). The vocabulary (the lexicon
of the search) is --vocab, one word a line, or else every word of --text. Prints the perplexity on
--valid and writes it to <out dir>/perplexity. Beside lm.json (ESPnet's joint search reads it) it writes
lm.arpa (the same probabilities as an ARPA file, for KenLM in the C++ search) and words.txt (its lexicon).
"""
import argparse
import os
import sys
import time

from mpq_plugins.datadir import DataDirError, read_lines, read_table, write_atomic
from mpq_plugins.espnet.wordlm import NgramLM


def read_sentences(path, text_format="kaldi"):
    """The word lists of a Kaldi text file (kaldi) or of one sentence a line (plain); strict UTF-8,
    and every bad line is a ValueError naming file:line."""
    out = []
    try:
        if text_format == "kaldi":
            rows = read_table(path)
            for key, _, n in rows:
                if not key:
                    raise ValueError(f"{path}:{n}: the line starts with a space (no utterance id)")
            lines = ((text, n) for _, text, n in rows)
        else:
            lines = read_lines(path)
        for text, n in lines:
            words = text.split()
            if not words:
                raise ValueError(f"{path}:{n}: {'empty transcript' if text_format == 'kaldi' else 'empty line'}")
            out.append(words)
    except DataDirError as e:
        raise ValueError(str(e))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}")
    if not out:
        raise ValueError(f"{path}: no sentences")
    return out


def read_vocab(path):
    """The words of a word list (one a line); strict UTF-8 like the texts."""
    try:
        return [w for line, _ in read_lines(path) for w in line.split()]
    except DataDirError as e:
        raise ValueError(str(e))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="the LM training text")
    p.add_argument("--text_format", choices=["kaldi", "plain"], default="kaldi",
                   help="of --text: kaldi (utt-id words...) or plain (one sentence a line)")
    p.add_argument("--valid", default=None, help="Kaldi text file for the perplexity")
    p.add_argument("--vocab", default=None, help="word list, one a line (default: the words of --text)")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        sents = read_sentences(a.text, a.text_format)
        if a.vocab:
            vocab = read_vocab(a.vocab)
        else:
            vocab = sorted({w for s in sents for w in s})
        try:
            lm = NgramLM.train(sents, vocab, a.order)
        except ValueError as e:
            if str(e).startswith("sentence "):  # a word outside --vocab; sentence n is line n of --text
                raise ValueError(f"{a.text}: {e} {a.vocab}")
            raise
        valid = read_sentences(a.valid) if a.valid else []
        oov = sorted({w for s in valid for w in s if not lm.is_word(w)})
        if oov:
            raise ValueError(f"{a.valid}: {len(oov)} words are not in the vocabulary, e.g. {' '.join(oov[:5])}")
    except (ValueError, OSError) as e:
        sys.exit(f"train_word_lm: {e}")
    outdir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(outdir, exist_ok=True)
    msg = f"{a.order}-gram on {len(sents)} sentences, {len(lm.words)} words"
    ppl = lm.perplexity(valid) if valid else None
    if ppl is not None:   # written first, so that an LM file is never beside the perplexity of another
        write_atomic(os.path.join(outdir, "perplexity"), f"{ppl:.2f}\n")
        msg += f", perplexity {ppl:.1f} on {a.valid}"
    elif os.path.exists(os.path.join(outdir, "perplexity")):
        os.remove(os.path.join(outdir, "perplexity"))
    if a.order >= 2:   # for the C++ decoder: the same LM as an ARPA file (KenLM), and its words as the lexicon
        arpa = os.path.join(outdir, "lm.arpa")
        lm.write_arpa(arpa + ".tmp")
        os.replace(arpa + ".tmp", arpa)
        write_atomic(os.path.join(outdir, "words.txt"), "".join(w + "\n" for w in lm.words))
    lm.save(a.out + ".tmp")
    os.replace(a.out + ".tmp", a.out)
    print(f"train_word_lm: {msg} ({time.time() - t0:.1f}s) -> {a.out}")


if __name__ == "__main__":
    main()
