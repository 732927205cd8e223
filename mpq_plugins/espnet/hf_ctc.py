"""A wav2vec2.0 or HuBERT model already fine-tuned with CTC in transformers' format (Wav2Vec2ForCTC,
HubertForCTC: config.json, model.safetensors or pytorch_model.bin, vocab.json), as an ESPnet ASR model of
ours: the foundation model as the `hf_ssl` encoder, its CTC head (`lm_head`) as ESPnet's CTC layer, its
vocabulary as a character token list. Then the recipe compresses, decodes and scores it without fine-tuning
it with ESPnet first (run.sh --asr_model_dir DIR, through mpq_plugins.espnet.imported).

Tokens: the padding token (transformers' CTC blank) becomes `<blank>`, first, as ESPnet's CTC expects; the
word delimiter (`|`) becomes `<space>`; the unknown token `<unk>`; the others keep their names and order;
`<sos/eos>`, which ESPnet's token lists end with, is added as an output that never wins (a zero row, a bias
far below the others'). `token_case` renames letters (e.g. `lower` for a corpus written in lower case, as
the default recipe's; most English CTC models are upper case); two tokens that would fall together are an
error. The CTC log-posteriors of the ESPnet model are those of the transformers model, rows permuted.
"""
import json
import os

import torch

from mpq_plugins.espnet.ssl import MODEL_TYPES, SSLModelError, _weights_file, read_hf_config

CTC_ARCHITECTURES = ("Wav2Vec2ForCTC", "HubertForCTC")
NEVER = 30.0   # the never-emitted <sos/eos>'s bias: this far below the lowest of the others


class HFCTCError(ValueError):
    pass


def is_hf_ctc_dir(model_dir):
    """A transformers model directory (config.json, no ESPnet config.yaml) of a CTC model."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path) or os.path.isfile(os.path.join(model_dir, "config.yaml")):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return any(a in CTC_ARCHITECTURES for a in json.load(f).get("architectures") or [])
    except (OSError, json.JSONDecodeError):
        return False


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise HFCTCError(f"{path}: no such file ({what})") from None
    except json.JSONDecodeError as e:
        raise HFCTCError(f"{path}: not JSON ({e})") from None


def token_map(model_dir, conf, token_case=None):
    """(ESPnet token list, for each of its tokens the transformers output row or None for <sos/eos>)."""
    vocab_path = os.path.join(model_dir, "vocab.json")
    vocab = _read_json(vocab_path, "the CTC model's vocabulary")
    if vocab and all(isinstance(v, dict) for v in vocab.values()):   # {language: {token: id}}: one language only
        if len(vocab) != 1:
            raise HFCTCError(f"{vocab_path}: vocabularies of several languages ({', '.join(vocab)}): not supported")
        vocab = next(iter(vocab.values()))
    tok_conf_path = os.path.join(model_dir, "tokenizer_config.json")
    tok_conf = _read_json(tok_conf_path, "") if os.path.isfile(tok_conf_path) else {}
    pad = tok_conf.get("pad_token", "<pad>")
    unk = tok_conf.get("unk_token", "<unk>")
    delim = tok_conf.get("word_delimiter_token", "|")
    ids = sorted(vocab.items(), key=lambda kv: kv[1])
    n_out = conf.get("vocab_size")
    if [i for _, i in ids] != list(range(len(ids))) or (n_out is not None and len(ids) != n_out):
        raise HFCTCError(f"{vocab_path}: ids are not 0..{len(ids) - 1} or differ from config.json's vocab_size "
                         f"{n_out}")
    if pad not in vocab:
        raise HFCTCError(f"{vocab_path}: no padding token {pad!r} (transformers' CTC blank)")
    if conf.get("pad_token_id") is not None and vocab[pad] != conf["pad_token_id"]:
        raise HFCTCError(f"{vocab_path}: {pad!r} is id {vocab[pad]}, config.json's pad_token_id {conf['pad_token_id']}")
    names, rows = ["<blank>"], [vocab[pad]]
    for tok, i in ids:
        if tok == pad:
            continue
        name = "<space>" if tok == delim else "<unk>" if tok == unk else tok
        if token_case and not (name.startswith("<") and name.endswith(">")):
            name = name.lower() if token_case == "lower" else name.upper()
        names.append(name)
        rows.append(i)
    if "<sos/eos>" in names:
        raise HFCTCError(f"{vocab_path}: has a token <sos/eos> (ESPnet's own)")
    seen = set()
    for tok in names:
        if tok in seen:
            raise HFCTCError(f"{vocab_path}: two tokens are {tok!r}" + (f" in {token_case} case" if token_case else ""))
        seen.add(tok)
    return names + ["<sos/eos>"], rows + [None]


def ctc_head(model_dir):
    """(weight, bias) of the transformers model's CTC head, lm_head."""
    name = _weights_file(model_dir)
    path = os.path.join(model_dir, name)
    try:
        if name.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(path, framework="pt") as f:
                keys = set(f.keys())
                state = {k: f.get_tensor(k) for k in ("lm_head.weight", "lm_head.bias") if k in keys}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise HFCTCError(f"{path}: not readable ({str(e).splitlines()[0]})") from None
    if "lm_head.weight" not in state or "lm_head.bias" not in state:
        raise HFCTCError(f"{path}: no lm_head.weight and lm_head.bias (the CTC head of a *ForCTC model)")
    return state["lm_head.weight"].float(), state["lm_head.bias"].float()


def espnet_config(model_dir):
    """The ESPnet model options of the CTC model (CTC alone, no decoder, the raw waveform in)."""
    return {
        "input_size": 1, "normalize": None, "specaug": None,
        "encoder": "hf_ssl",
        "encoder_conf": {"model_dir": os.path.abspath(model_dir), "freeze_feature_encoder": True},
        "model_conf": {"ctc_weight": 1.0},
        "token_type": "char",
        "unused_parameters": True,      # layer-drop skips layers: DDP must not wait for their gradients
        "best_model_criterion": [["valid", "cer_ctc", "min"]],   # no attention accuracy
        "num_att_plot": 0, "use_tensorboard": False,
    }


def convert(model_dir, token_case=None):
    """(ESPnet config without its token list, token list, state dict) of the CTC model in model_dir."""
    if token_case not in (None, "lower", "upper"):
        raise HFCTCError(f"token_case {token_case!r} is not lower or upper")
    try:
        conf = read_hf_config(model_dir)
    except SSLModelError as e:
        raise HFCTCError(str(e)) from None
    if conf.get("model_type") not in MODEL_TYPES:
        raise HFCTCError(f"{model_dir}/config.json: model_type {conf.get('model_type')!r} is not one of "
                         f"{', '.join(MODEL_TYPES)}")
    tokens, rows = token_map(model_dir, conf, token_case)
    weight, bias = ctc_head(model_dir)
    if weight.shape[0] != len(rows) - 1:
        raise HFCTCError(f"{model_dir}: lm_head has {weight.shape[0]} outputs, vocab.json {len(rows) - 1} tokens")
    from mpq_plugins.espnet.load import build_from_config
    from mpq_plugins.espnet.ssl import HFSSLEncoder
    esp = espnet_config(model_dir)
    model = build_from_config({**esp, "token_list": tokens}, os.path.join(model_dir, "config.json"))
    pretrained = HFSSLEncoder(1, model_dir=model_dir, pretrained=True, freeze_feature_encoder=True)
    model.encoder.load_state_dict(pretrained.state_dict())
    with torch.no_grad():
        lo = model.ctc.ctc_lo
        lo.weight.zero_()
        lo.bias.fill_(float(bias.min()) - NEVER)
        for j, r in enumerate(rows):
            if r is not None:
                lo.weight[j] = weight[r]
                lo.bias[j] = bias[r]
    return esp, tokens, model.state_dict()
