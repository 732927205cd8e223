"""Decode a Kaldi data dir with a model loaded strictly (float, quantized or packed): the C++ CTC search with
attention rescoring (search: lexicon or ctc) or ESPnet's joint beam search (search: espnet).

    python -m mpq_plugins.bin.asr_inference --data_path_and_name_and_type data/test/wav.scp,speech,sound \
        --key_file keys.1.scp --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.ave.pth \
        --config conf/decode_asr.yaml --output_dir out [--word_lm_file exp/wordlm/lm.json]

Writes <output_dir>/1best_recog/{text,token,score} as ESPnet's asr_inference does. The decoding
options come from the --config yaml (mpq_plugins.espnet.decoding.DECODE_OPTIONS); a key it does not
know is an error, not a silently ignored line.
"""
import argparse
import functools
import logging
import sys

from mpq_plugins.espnet.decoding import build_recognizer, decode_datadir, read_decode_config
from mpq_plugins.quant import QuantConfigError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path_and_name_and_type", required=True, help="e.g. data/test/wav.scp,speech,sound")
    p.add_argument("--key_file", default=None)
    p.add_argument("--asr_train_config", required=True)
    p.add_argument("--asr_model_file", required=True)
    p.add_argument("--config", required=True, help="decoding options (yaml)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--lm_train_config", default=None)
    p.add_argument("--lm_file", default=None)
    p.add_argument("--word_lm_file", default=None, help="word n-gram LM (mpq_plugins.bin.train_word_lm), search: espnet")
    p.add_argument("--arpa_file", default=None, help="word n-gram LM as an ARPA file (KenLM), search: lexicon")
    p.add_argument("--lexicon_file", default=None, help="the words of the lexicon, one a line, search: lexicon")
    p.add_argument("--ngpu", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s: %(message)s")
    try:
        opts = read_decode_config(a.config)
        print(f"asr_inference: {' '.join(sys.argv)}\nasr_inference: options {opts}", flush=True)
        rec = build_recognizer(a.asr_train_config, a.asr_model_file, opts, a.lm_train_config, a.lm_file,
                               a.word_lm_file, a.lexicon_file, a.arpa_file, "cuda" if a.ngpu > 0 else "cpu")
    except (ValueError, QuantConfigError) as e:
        sys.exit(f"asr_inference: {e}")
    if opts["serve"] == "int8":
        import torch

        from mpq_plugins.quant.serve import linear_engine
        engine = linear_engine(opts["int8_engine"]) or torch.backends.quantized.engine
        print(f"asr_inference: serve int8: {len(rec.int8_layers)} quantized layers on int8 kernels "
              f"(Linear engine {engine})", flush=True)
    decode_datadir(rec, a.data_path_and_name_and_type, a.key_file, a.output_dir,
                   log=functools.partial(print, flush=True))


if __name__ == "__main__":
    main()
