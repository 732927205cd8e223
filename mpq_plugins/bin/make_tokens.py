"""Train the token model and write ESPnet's token list.

    python -m mpq_plugins.bin.make_tokens --text data/train/text --token_type bpe --nbpe 300 \
        --outdir data/token_list/bpe_unigram300

token_type bpe: a sentencepiece unigram model (<outdir>/bpe.model); char: characters; word: words.
tokens.txt is ESPnet's token list: <blank>, <unk>, the tokens, <sos/eos>.
"""
import argparse
import collections
import os
import shutil
import sys


def read_text(path):
    lines = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ", 1)
            if len(parts) < 2 or not parts[1].strip():
                sys.exit(f"make_tokens: {path}:{n}: empty transcript")
            lines.append(parts[1].strip())
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="Kaldi text file (utt-id transcript)")
    p.add_argument("--token_type", choices=["bpe", "char", "word"], default="bpe")
    p.add_argument("--nbpe", type=int, default=300)
    p.add_argument("--bpemode", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--outdir", required=True)
    a = p.parse_args(argv)
    lines = read_text(a.text)
    tmp = a.outdir.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    if a.token_type == "bpe":
        import sentencepiece as spm
        corpus = os.path.join(tmp, "train.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "bpe"), vocab_size=a.nbpe,
            model_type=a.bpemode, character_coverage=1.0, input_sentence_size=100000000,
            minloglevel=2)
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
    with open(os.path.join(tmp, "tokens.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(["<blank>", "<unk>"] + tokens + ["<sos/eos>"]) + "\n")
    if os.path.isdir(a.outdir):
        shutil.rmtree(a.outdir)
    os.replace(tmp, a.outdir)
    print(f"make_tokens: {len(tokens) + 3} tokens in {a.outdir}/tokens.txt")


if __name__ == "__main__":
    main()
