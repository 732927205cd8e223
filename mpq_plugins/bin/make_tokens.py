"""Train the token model and write ESPnet's token list.

    python -m mpq_plugins.bin.make_tokens --text data/train/text --token_type bpe --nbpe 300 \
        --output_dir data/token_list/bpe_unigram300

token_type bpe: a sentencepiece unigram model (<output_dir>/bpe.model); char: characters (and those of
--lexicon's words); word: words.
tokens.txt is ESPnet's token list: <blank>, <unk>, the tokens, <sos/eos>. The output dir is built
beside it (<output_dir>.tmp) and swapped in whole, so a failed run leaves the previous one in place.
"""
import argparse
import collections
import os
import sys

from mpq_plugins.datadir import DataDirError, built_dir, read_lines, read_table


def read_text(path):
    """The transcripts of a Kaldi text file; every bad line is one error naming file:line."""
    try:
        rows = read_table(path)
    except DataDirError as e:
        sys.exit(f"make_tokens: {e}")
    except OSError as e:
        sys.exit(f"make_tokens: cannot read {path}: {e.strerror}")
    for key, text, n in rows:
        if not key:
            sys.exit(f"make_tokens: {path}:{n}: the line starts with a space (no utterance id)")
        if not text:
            sys.exit(f"make_tokens: {path}:{n}: empty transcript")
    if not rows:
        sys.exit(f"make_tokens: {path}: no transcripts")
    return [text for _, text, _ in rows]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="Kaldi text file (utt-id transcript)")
    p.add_argument("--token_type", choices=["bpe", "char", "word"], default="bpe")
    p.add_argument("--nbpe", type=int, default=300)
    p.add_argument("--bpemode", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--output_dir", required=True, help="where tokens.txt (and bpe.model) go")
    p.add_argument("--lexicon", default=None,
                   help="char tokens: a word list (the LM's vocabulary) whose letters the token list must have too, "
                        "so that the lexicon search can spell every word (letters not in --text come last)")
    a = p.parse_args(argv)
    lines = read_text(a.text)
    with built_dir(a.output_dir) as tmp:   # a failed or killed run leaves the previous token dir as it was
        if a.token_type == "bpe":
            import sentencepiece as spm
            corpus = os.path.join(tmp, "train.txt")
            with open(corpus, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            try:
                spm.SentencePieceTrainer.train(
                    input=corpus, model_prefix=os.path.join(tmp, "bpe"), vocab_size=a.nbpe,
                    model_type=a.bpemode, character_coverage=1.0, input_sentence_size=100000000,
                    minloglevel=2)
            except RuntimeError as e:  # e.g. "Vocabulary size too high (300). Please set it to a value <= 14."
                sys.exit(f"make_tokens: sentencepiece failed on {a.text} with --nbpe {a.nbpe}: "
                         f"{str(e).split('] ')[-1].strip()}")
            sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "bpe.model"))
            tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                      if not (sp.is_unknown(i) or sp.is_control(i))]
        else:
            counts = collections.Counter()
            for line in lines:
                # ESPnet's char tokenizer writes a space as <space>
                counts.update(line.split() if a.token_type == "word"
                              else ["<space>" if c == " " else c for c in line])
            tokens = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
            if a.lexicon and a.token_type == "char":
                try:
                    letters = {c for line, _ in read_lines(a.lexicon) for w in line.split()[:1] for c in w}
                except DataDirError as e:
                    sys.exit(f"make_tokens: {e}")
                except OSError as e:
                    sys.exit(f"make_tokens: cannot read {a.lexicon}: {e.strerror}")
                tokens += sorted(letters - set(tokens))
        with open(os.path.join(tmp, "tokens.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(["<blank>", "<unk>"] + tokens + ["<sos/eos>"]) + "\n")
    print(f"make_tokens: {len(tokens) + 3} tokens in {a.output_dir}/tokens.txt")


if __name__ == "__main__":
    main()
