"""Tune the decoding weights on a held-out data dir (dev), for the C++ CTC search with attention rescoring.

    python -m mpq_plugins.bin.tune_decoding --config conf/decode_asr.yaml --data data/dev \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/packed.safetensors \
        --arpa_file exp/lm/lm.arpa --lexicon_file exp/lm/words.txt --out exp/asr/decode_asr_tuned.yaml

The grid is the `tune:` mapping of --config ({option: [values]} over word_lm_weight, word_score and
ctc_weight). Writes --out: --config with the weights of the fewest dev word errors (and no `tune:`),
and <out dir>/<out name>.tsv: every grid point with its errors. A config without `tune:` is copied as
it is. Test sets are never read here: the weights are chosen on --data only.

<out dir>/<out name>.inputs holds the digest of what the weights depend on: the options as parsed (not the
file's bytes nor its time), the model and its config, the LM files and the held-out data's lists. While it
matches, --out is up to date and nothing is decoded (a fresh checkout of the recipe, whose confs are all newer
than the results, tunes nothing again).
"""
import argparse
import functools
import hashlib
import json
import os
import sys
import time

import yaml

from mpq_plugins.datadir import DataDirError, file_digest, read_table, write_atomic


def inputs_digest(a):
    """The SHA-256 of the tuning's inputs (see the module's doc): the same inputs, the same weights."""
    with open(a.config, "rb") as f:
        raw = f.read()
    try:
        config = yaml.safe_load(raw)
    except yaml.YAMLError:
        config = raw.hex()        # read_decode_config names the problem below
    files = {k: file_digest(v) for k, v in sorted(vars(a).items())
             if k not in ("config", "data", "out") and v is not None}
    data = {f: file_digest(os.path.join(a.data, f)) for f in ("wav.scp", "text")
            if os.path.exists(os.path.join(a.data, f))}
    key = json.dumps({"config": config, "files": files, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="decoding options (yaml) with a tune: grid")
    p.add_argument("--data", required=True, help="the held-out data dir (wav.scp, text)")
    p.add_argument("--asr_train_config", required=True)
    p.add_argument("--asr_model_file", required=True)
    p.add_argument("--arpa_file", default=None)
    p.add_argument("--lexicon_file", default=None)
    p.add_argument("--out", required=True, help="the tuned decoding config (yaml)")
    for lm_opt in ("--word_lm_file", "--lm_train_config", "--lm_file"):   # asr_inference's LM options: not tuned
        p.add_argument(lm_opt, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    log = functools.partial(print, flush=True)
    t0 = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    stamp = os.path.splitext(a.out)[0] + ".inputs"
    try:
        digest = inputs_digest(a)
    except OSError as e:
        sys.exit(f"tune_decoding: {e.filename}: {e.strerror}")
    if os.path.exists(a.out) and os.path.exists(stamp) and open(stamp, encoding="utf-8").read().strip() == digest:
        log(f"tune_decoding: {a.out} is up to date (its options, model, LM and {a.data} unchanged); not tuning again")
        return
    from mpq_plugins.espnet.decoding import build_recognizer, read_batches, read_decode_config
    from mpq_plugins.quant import QuantConfigError
    try:
        opts = read_decode_config(a.config)
        with open(a.config, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if opts["tune"] and opts["search"] == "espnet":
            raise ValueError(f"{a.config}: tune: is for search: lexicon or ctc, not espnet")
        if opts["tune"]:
            from mpq_plugins.espnet.ctc_search import tune
            refs = {k: v.split() for k, v, _ in read_table(os.path.join(a.data, "text"))}
            rec = build_recognizer(a.asr_train_config, a.asr_model_file, opts, lexicon_file=a.lexicon_file,
                                   arpa_file=a.arpa_file)
            batches = list(read_batches(os.path.join(a.data, "wav.scp") + ",speech,sound", None, opts["batch_seconds"]))
            rows, best = tune(rec, batches, refs, opts["tune"], log=log)
            raw = {k: v for k, v in raw.items() if k != "tune"}
            raw.update(best)
            table = "".join("\t".join(str(v) for v in values.values()) + f"\t{err}\t{n}\n" for values, err, n in rows)
            write_atomic(os.path.splitext(a.out)[0] + ".tsv", "\t".join(list(rows[0][0]) + ["errors", "words"]) + "\n" + table)
    except (ValueError, QuantConfigError, DataDirError) as e:
        sys.exit(f"tune_decoding: {e}")
    text = f"# {a.config}, tuned on {a.data} by mpq_plugins.bin.tune_decoding\n" + yaml.safe_dump(raw, sort_keys=False)
    if not os.path.exists(a.out) or open(a.out, encoding="utf-8").read() != text:
        write_atomic(a.out, text)   # only when the weights change: decodes made with them stay up to date
    write_atomic(stamp, digest + "\n")
    log(f"tune_decoding: {a.out} ({time.time() - t0:.0f}s)" + (f": {best}" if opts["tune"] else ": nothing to tune"))


if __name__ == "__main__":
    main()
