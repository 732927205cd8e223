"""Bring an ESPnet ASR model trained elsewhere into a recipe (run.sh --asr_model_dir DIR: stage 2).

    python -m mpq_plugins.bin.import_model --model_dir /path/to/exp_or_zoo_dir [--model_file CKPT] \\
        --out_dir exp/asr_mymodel

Checks the model directory (mpq_plugins.espnet.imported: config, checkpoint, token list, sentencepiece
model, statistics, encoder) and writes the model into out_dir as stage 5 would have left it; each problem
is one line naming the file. Files are rewritten only when they change. A transformers wav2vec2/HuBERT
model fine-tuned with CTC (Wav2Vec2ForCTC, HubertForCTC: config.json, weights, vocab.json) is converted
(mpq_plugins.espnet.hf_ctc; --token_case lower for a corpus in lower case).
"""
import argparse
import sys

from mpq_plugins.espnet.imported import ImportModelError, import_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="ESPnet exp dir or unpacked model-zoo dir")
    p.add_argument("--model_file", default=None, help="the checkpoint (default: the best one beside config.yaml)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--token_case", choices=("lower", "upper"), default=None,
                   help="a transformers CTC model: its letters as the corpus writes them (e.g. lower)")
    p.add_argument("--checkpoint_name", default=None,
                   help="the checkpoint's name in out_dir (the recipe's --inference_model; default "
                        "valid.acc.best.pth, a CTC model's valid.cer_ctc.best.pth)")
    a = p.parse_args(argv)
    try:
        r = import_model(a.model_dir, a.out_dir, a.model_file, a.token_case, a.checkpoint_name)
    except (ImportModelError, ValueError, OSError) as e:
        sys.exit(f"import_model: {e}")
    print(f"import_model: {r['config']} with {r['checkpoint']} -> {a.out_dir}: {r['encoder']} encoder, "
          f"{r['tokens']} {r['token_type']} tokens, {r['params']:,} parameters")


if __name__ == "__main__":
    main()
