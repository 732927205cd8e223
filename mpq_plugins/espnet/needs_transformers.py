"""Which parts of an ESPnet ASR (or LM) config need the transformers package.

ESPnet imports transformers whenever it is installed, at import, for a few optional classes (the
huggingface frontend, the BEATs encoder, the huggingface post-encoder, decoder and tokenizer, adapters):
about a third of every process's start here (results/benchmark_startup.md). A run whose model uses none
of them can hide the package (tools/pystartup/sitecustomize.py, MPQ_HIDE_TRANSFORMERS=1; run.sh decides
with this module). The test is an allow-list: a value not known to be free of transformers (our hf_ssl
encoder, anything new) counts as needing it: a gap in the list costs speed, never a model.

Reads yaml only: it must not import ESPnet (its caller runs before every other process)."""
import shlex

import yaml

# key -> the values (None: the key is absent or null) whose classes import nothing from transformers
FREE = {
    "frontend": {None, "default"},
    "specaug": {None, "specaug"},
    "normalize": {None, "global_mvn", "utterance_mvn"},
    "preencoder": {None},
    "encoder": {None, "conformer", "e_branchformer", "branchformer", "transformer", "rnn", "vgg_rnn",
                "contextual_block_transformer", "contextual_block_conformer",
                "conformer_heads", "e_branchformer_heads", "transformer_heads"},
    "postencoder": {None},
    "decoder": {None, "none", "transformer", "rnn"},
    "model": {None, "espnet", "mpq_espnet", "mpq_all_in_one"},
    "preprocessor": {None, "default"},
    "token_type": {None, "char", "bpe", "word"},
    "use_adapter": {None, False},
    "lm": {None, "seq_rnn", "transformer"},
}

WORDS = {"null": None, "none": None, "true": True, "false": False}   # ESPnet's str_or_none and str2bool


def _free(key, value):
    """Whether this value of key is known not to need transformers (a list or mapping never is)."""
    v = value.strip().lower() if isinstance(value, str) else value
    try:
        return WORDS.get(v, v) in FREE[key]
    except TypeError:
        return False


def reasons(configs=(), args=""):
    """What in these yaml files and this string of ESPnet options (`--encoder hf_ssl ...`, as run.sh's
    --asr_args) needs transformers, one line each; empty: nothing does. A file that cannot be read as a
    mapping is a reason too (the stage that reads it reports what is wrong)."""
    out = []
    for path in configs:
        try:
            with open(path, encoding="utf-8") as f:
                cfg = yaml.safe_load(f)
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            out.append(f"{path}: not read ({type(e).__name__})")
            continue
        cfg = cfg if cfg is not None else {}
        if not isinstance(cfg, dict):
            out.append(f"{path}: not a mapping")
            continue
        out += [f"{path}: {k}: {cfg[k]}" for k in FREE if k in cfg and not _free(k, cfg[k])]
    try:
        words = shlex.split(args)
    except ValueError as e:                  # e.g. an unclosed quote: ESPnet's parser will say what is wrong
        return out + [f"options: not read ({e})"]
    for i, w in enumerate(words):
        key, eq, v = w[2:].partition("=")
        if not w.startswith("--") or key not in FREE:
            continue
        v = v if eq else (words[i + 1] if i + 1 < len(words) else None)
        if not _free(key, v):
            out.append(f"options: --{key} {v}")
    return out
