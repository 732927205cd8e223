"""Train the word n-gram LM (interpolated Kneser-Ney) used in decoding.

    python -m mpq_plugins.bin.train_word_lm --text data/local/corpus/lm_train.txt \
        --valid data/dev/text --order 3 --out exp/wordlm_3gram/lm.json [--vocab data/local/corpus/vocab.txt]

--text and --valid are Kaldi text files (utt-id words...). The vocabulary (the lexicon of the
search) is --vocab, one word a line, or else every word of --text. Prints the perplexity on --valid
and writes it to <out dir>/perplexity.
"""
import argparse
import os
import sys
import time

from mpq_plugins.wordlm import NgramLM


def read_sentences(path):
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) < 2:
                    raise ValueError(f"{path}:{n}: empty transcript")
                out.append(parts[1:])
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason})")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True)
    p.add_argument("--valid", default=None)
    p.add_argument("--vocab", default=None)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        sents = read_sentences(a.text)
        if a.vocab:
            with open(a.vocab, encoding="utf-8") as f:
                vocab = [w for w in f.read().split()]
        else:
            vocab = sorted({w for s in sents for w in s})
        lm = NgramLM.train(sents, vocab, a.order)
        valid = read_sentences(a.valid) if a.valid else []
        oov = sorted({w for s in valid for w in s if not lm.is_word(w)})
        if oov:
            raise ValueError(f"{a.valid}: {len(oov)} words are not in the vocabulary, e.g. {' '.join(oov[:5])}")
    except (ValueError, OSError) as e:
        sys.exit(f"train_word_lm: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    lm.save(a.out + ".tmp")
    os.replace(a.out + ".tmp", a.out)
    msg = f"{a.order}-gram on {len(sents)} sentences, {len(lm.words)} words"
    if valid:
        ppl = lm.perplexity(valid)
        with open(os.path.join(os.path.dirname(os.path.abspath(a.out)), "perplexity"), "w") as f:
            f.write(f"{ppl:.2f}\n")
        msg += f", perplexity {ppl:.1f} on {a.valid}"
    print(f"train_word_lm: {msg} ({time.time() - t0:.1f}s) -> {a.out}")


if __name__ == "__main__":
    main()
