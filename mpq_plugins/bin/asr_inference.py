"""Decode a Kaldi data dir with ESPnet's Speech2Text, optionally with our word n-gram LM.

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


def build_speech2text(asr_train_config, asr_model_file, opts, lm_train_config=None, lm_file=None,
                      word_lm_file=None, device="cpu"):
    """ESPnet's Speech2Text, with our word LM added to its beam search when word_lm_file is given."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet2.bin.asr_inference import Speech2Text

    from mpq_plugins.decoding import WordLMScorer
    from mpq_plugins.wordlm import NgramLM

    s2t = Speech2Text(asr_train_config=asr_train_config, asr_model_file=asr_model_file,
                      lm_train_config=lm_train_config, lm_file=lm_file, device=device,
                      beam_size=opts["beam_size"], ctc_weight=opts["ctc_weight"], lm_weight=opts["lm_weight"],
                      penalty=opts["penalty"], nbest=opts["nbest"], maxlenratio=opts["maxlenratio"],
                      minlenratio=opts["minlenratio"], normalize_length=opts["normalize_length"])
    if word_lm_file:
        try:
            lm = NgramLM.load(word_lm_file)
        except ValueError as e:
            raise SystemExit(f"asr_inference: {e}")
        bs, model = s2t.beam_search, s2t.asr_model
        scorers = {**bs.full_scorers, **bs.part_scorers,
                   "wordlm": WordLMScorer(lm, model.token_list, model.eos)}
        weights = {**bs.weights, "wordlm": opts["word_lm_weight"]}
        s2t.beam_search = BatchBeamSearch(
            scorers=scorers, weights=weights, beam_size=opts["beam_size"], vocab_size=len(model.token_list),
            sos=model.sos, eos=model.eos, token_list=model.token_list,
            pre_beam_score_key=None if opts["ctc_weight"] == 1.0 else "full",
            normalize_length=opts["normalize_length"]).to(device).eval()
    return s2t


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

    device = "cuda" if a.ngpu > 0 else "cpu"
    s2t = build_speech2text(a.asr_train_config, a.asr_model_file, opts, a.lm_train_config, a.lm_file,
                            a.word_lm_file, device)
    path, name, typ = a.data_path_and_name_and_type.split(",")
    loader = ASRTask.build_streaming_iterator(
        [(path, name, typ)], dtype="float32", batch_size=1, key_file=a.key_file, num_workers=0,
        preprocess_fn=ASRTask.build_preprocess_fn(s2t.asr_train_args, False),
        collate_fn=ASRTask.build_collate_fn(s2t.asr_train_args, False), inference=True)
    t0, n = time.time(), 0
    with DatadirWriter(a.output_dir) as writer:
        for keys, batch in loader:
            speech = batch["speech"][0]
            results = s2t(speech)
            for i, (text, token, _, hyp) in enumerate(results[:opts["nbest"]], 1):
                w = writer[f"{i}best_recog"]
                w["text"][keys[0]] = text if text is not None else ""
                w["token"][keys[0]] = " ".join(token)
                w["score"][keys[0]] = str(float(hyp.score))
            n += 1
            if n % 20 == 0:
                print(f"asr_inference: {n} utterances in {time.time() - t0:.0f}s", flush=True)
    print(f"asr_inference: decoded {n} utterances in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
