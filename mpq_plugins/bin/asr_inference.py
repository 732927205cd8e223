"""Decode a Kaldi data dir: ESPnet's beam search over a model loaded strictly (float, quantized or packed).

    python -m mpq_plugins.bin.asr_inference --data_path_and_name_and_type data/test/wav.scp,speech,sound \
        --key_file keys.1.scp --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.ave.pth \
        --config conf/decode_asr.yaml --output_dir out [--word_lm_file exp/wordlm/lm.json]

Writes <output_dir>/1best_recog/{text,token,score} as ESPnet's asr_inference does. The decoding
options come from the --config yaml (the keys of DECODE_OPTIONS); a key it does not know is an
error, not a silently ignored line.
"""
import argparse
import logging
import sys
import time

import yaml

DECODE_OPTIONS = {   # yaml key: (type, default)
    "beam_size": (int, 10), "ctc_weight": (float, 0.5), "lm_weight": (float, 0.5),
    "word_lm_weight": (float, 1.0), "penalty": (float, 0.0), "nbest": (int, 1),
    "maxlenratio": (float, 0.0), "minlenratio": (float, 0.0), "normalize_length": (bool, False),
}


def read_decode_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"asr_inference: cannot read decoding config {path}: {e}")
    if not isinstance(conf, dict):
        raise SystemExit(f"asr_inference: {path}: expected a mapping of decoding options")
    unknown = sorted(set(conf) - set(DECODE_OPTIONS))
    if unknown:
        raise SystemExit(f"asr_inference: {path}: unknown decoding option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(DECODE_OPTIONS)})")
    out = {k: d for k, (_, d) in DECODE_OPTIONS.items()}
    for k, v in conf.items():
        typ = DECODE_OPTIONS[k][0]
        try:
            out[k] = typ(v) if typ is not bool else bool(v)
        except (TypeError, ValueError):
            raise SystemExit(f"asr_inference: {path}: {k}: {v!r} is not a {typ.__name__}")
    return out


def build_recognizer(asr_train_config, asr_model_file, opts, lm_train_config=None, lm_file=None,
                     word_lm_file=None, device="cpu"):
    """Our model loader (strict, weights_only; float, quantized or packed) + ESPnet's beam search."""
    from mpq_plugins.decoding import Recognizer
    from mpq_plugins.espnet_task import load_asr_model, load_lm
    from mpq_plugins.wordlm import NgramLM

    model, conf = load_asr_model(asr_train_config, asr_model_file, device)
    word_lm = NgramLM.load(word_lm_file) if word_lm_file else None
    rnn_lm = load_lm(lm_train_config, lm_file, device) if lm_train_config else None
    return Recognizer(model, conf, opts, word_lm=word_lm, rnn_lm=rnn_lm, device=device)


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
    p.add_argument("--word_lm_file", default=None, help="word n-gram LM (mpq_plugins.bin.train_word_lm)")
    p.add_argument("--ngpu", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s: %(message)s")
    opts = read_decode_config(a.config)
    print(f"asr_inference: {' '.join(sys.argv)}\nasr_inference: options {opts}", flush=True)

    from espnet2.fileio.datadir_writer import DatadirWriter
    from espnet2.tasks.asr import ASRTask
    from espnet2.train.collate_fn import CommonCollateFn

    from mpq_plugins.quant import QuantConfigError

    device = "cuda" if a.ngpu > 0 else "cpu"
    try:
        rec = build_recognizer(a.asr_train_config, a.asr_model_file, opts, a.lm_train_config, a.lm_file,
                               a.word_lm_file, device)
    except (ValueError, QuantConfigError) as e:
        raise SystemExit(f"asr_inference: {e}")
    path, name, typ = a.data_path_and_name_and_type.split(",")
    # speech only: ESPnet's training preprocessor leaves the waveform as it is read
    loader = ASRTask.build_streaming_iterator(
        [(path, name, typ)], dtype="float32", batch_size=1, key_file=a.key_file, num_workers=0,
        preprocess_fn=None, collate_fn=CommonCollateFn(float_pad_value=0.0, int_pad_value=-1), inference=True)
    t0, n = time.time(), 0
    with DatadirWriter(a.output_dir) as writer:
        for keys, batch in loader:
            for i, (text, tokens, hyp) in enumerate(rec(batch[name][0]), 1):
                w = writer[f"{i}best_recog"]
                w["text"][keys[0]] = text
                w["token"][keys[0]] = " ".join(tokens)
                w["score"][keys[0]] = f"{float(hyp.score):.4f}"
            n += 1
            if n % 20 == 0:
                print(f"asr_inference: {n} utterances in {time.time() - t0:.0f}s", flush=True)
    print(f"asr_inference: decoded {n} utterances in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
