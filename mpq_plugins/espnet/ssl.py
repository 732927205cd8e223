"""Speech foundation models (wav2vec2.0, HuBERT) as an ESPnet encoder: `encoder: hf_ssl`.

The model comes from a local directory in transformers' format (config.json and model.safetensors or
pytorch_model.bin, e.g. an unpacked facebook/wav2vec2-base or facebook/hubert-large-ll60k); nothing is
downloaded. It reads the raw waveform, so the ESPnet config has no frontend (`input_size: 1`), no
normalization layer and no specaug (the model masks its own features): see
egs/librispeech_100_ssl/conf/train_asr_wav2vec2_base.yaml. With `decoder` left out and
`model_conf: {ctc_weight: 1.0}` it is the papers' CTC fine-tuning: ESPnet's CTC layer is the head.

- Output lengths are frames, computed from the waveform lengths through the convolutional feature
  encoder's kernels and strides (unlike ESPnet's `huggingface` frontend, which returns samples).
- Padding: samples beyond a waveform's length are zeroed; models with layer-normed feature encoders
  (`feat_extract_norm: layer`, e.g. HuBERT-large) also get the attention mask, group-normed ones
  (wav2vec2-base) do not, as they were pre-trained (transformers' advice for these checkpoints).
- Fine-tuning options: `freeze_feature_encoder` (the CNN, as in the papers), `freeze_steps` (the whole
  foundation model frozen for the first training batches, the CTC head alone learning), and any
  transformers config value given in `overrides` (e.g. layerdrop, mask_time_prob, hidden_dropout).
- `normalize_waveform` (zero mean, unit variance per utterance over its own samples): from the
  directory's preprocessor_config.json `do_normalize` unless given.
- The positional convolution's weight norm is folded into its weight when the model is built (same
  function), so the float and quantized models have one `weight` to train, quantize and store.
- `pretrained: false` builds the architecture alone (from `hf_config` if given, else config.json): our
  loaders do this when a checkpoint's weights follow, and a packed file carries `hf_config`, so a
  packed foundation model needs no model directory to be served.
"""
import json
import os

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder

MODEL_TYPES = ("wav2vec2", "hubert")


class SSLModelError(ValueError):
    pass


def read_hf_config(model_dir):
    """config.json of a transformers model directory, checked: one error naming the file otherwise."""
    path = os.path.join(str(model_dir), "config.json")
    if not os.path.isdir(str(model_dir)):
        raise SSLModelError(f"encoder hf_ssl: model_dir {model_dir}: no such directory (a local wav2vec2 or "
                            "HuBERT model in transformers' format: config.json and its weights)")
    try:
        with open(path, encoding="utf-8") as f:
            conf = json.load(f)
    except FileNotFoundError:
        raise SSLModelError(f"{path}: no such file (model_dir must hold a transformers model)") from None
    except json.JSONDecodeError as e:
        raise SSLModelError(f"{path}: not JSON ({e})") from None
    if conf.get("model_type") not in MODEL_TYPES:
        raise SSLModelError(f"{path}: model_type {conf.get('model_type')!r} is not one of {', '.join(MODEL_TYPES)}")
    return conf


def _weights_file(model_dir):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(model_dir, name)):
            return name
    raise SSLModelError(f"{model_dir}: no model.safetensors or pytorch_model.bin beside config.json (encoder hf_ssl "
                        "loads the pretrained weights from there)")


def fold_weight_norm(conv):
    """The conv's weight norm (torch parametrization or the older weight_g/weight_v hook) folded into a
    plain weight with the same value."""
    from torch.nn.utils import parametrize
    if parametrize.is_parametrized(conv, "weight"):
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    elif hasattr(conv, "weight_g"):
        torch.nn.utils.remove_weight_norm(conv)
    return conv


def for_checkpoint(encoder, encoder_conf):
    """The encoder_conf that builds a model whose weights a checkpoint gives: a foundation model without
    loading its pretrained ones (other encoders: as it is)."""
    return {**(encoder_conf or {}), "pretrained": False} if encoder == "hf_ssl" else encoder_conf


def conv_output_lengths(lengths, kernels, strides):
    """Frames out of the feature encoder for waveforms of these lengths (no padding in its convolutions)."""
    for k, s in zip(kernels, strides):
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


class HFSSLEncoder(AbsEncoder):
    def __init__(self, input_size, model_dir=None, pretrained=True, hf_config=None, freeze_feature_encoder=True,
                 freeze_steps=0, normalize_waveform=None, overrides=None):
        super().__init__()
        if input_size != 1:
            raise SSLModelError(f"encoder hf_ssl reads the raw waveform: set input_size: 1 (no frontend), not "
                                f"{input_size}, and normalize: null")
        import transformers   # only models with this encoder pay for importing transformers
        transformers.utils.logging.disable_progress_bar()
        overrides = dict(overrides or {})
        if hf_config is None or pretrained:
            if model_dir is None:
                raise SSLModelError("encoder hf_ssl needs model_dir (a local transformers model directory)")
            conf = read_hf_config(model_dir)
        else:
            conf = dict(hf_config)
        unknown = sorted(k for k in overrides if k not in transformers.AutoConfig.for_model(conf["model_type"]).to_dict())
        if unknown:
            raise SSLModelError(f"encoder hf_ssl: overrides {', '.join(unknown)} are not options of a "
                                f"{conf['model_type']} config")
        cls = {"wav2vec2": transformers.Wav2Vec2Model, "hubert": transformers.HubertModel}[conf["model_type"]]
        config = transformers.AutoConfig.for_model(**{**conf, **overrides})
        if pretrained:
            _weights_file(model_dir)
            self.model = cls.from_pretrained(model_dir, config=config, local_files_only=True)
        else:
            self.model = cls(config)
        fold_weight_norm(self.model.encoder.pos_conv_embed.conv)
        if freeze_feature_encoder:
            for p in self.model.feature_extractor.parameters():
                p.requires_grad_(False)
        if normalize_waveform is None:
            pre = os.path.join(str(model_dir), "preprocessor_config.json") if model_dir else None
            normalize_waveform = False
            if pre and os.path.isfile(pre):
                with open(pre, encoding="utf-8") as f:
                    normalize_waveform = bool(json.load(f).get("do_normalize", False))
        self.normalize_waveform = bool(normalize_waveform)
        self.freeze_steps = int(freeze_steps)
        # training batches seen (float: ESPnet's n-best averaging of a checkpoint sums integer tensors)
        self.register_buffer("batches_seen", torch.zeros(()))

    def output_size(self):
        return self.model.config.hidden_size

    def hf_config(self):
        """The transformers config as a plain dict (what a packed file stores to rebuild the model)."""
        out = json.loads(self.model.config.to_json_string())   # lists, not tuples: yaml.safe_dump writes it
        return {k: v for k, v in out.items() if not k.startswith("_") and k != "transformers_version"}

    def forward(self, xs_pad, ilens, prev_states=None):
        if xs_pad.dim() == 3:
            xs_pad = xs_pad.squeeze(-1)
        x = xs_pad[:, : int(ilens.max())]
        mask = torch.arange(x.size(1), device=x.device)[None, :] < ilens[:, None]
        x = x * mask
        if self.normalize_waveform:
            n = ilens.clamp(min=1).to(x.dtype)[:, None]
            mean = x.sum(1, keepdim=True) / n
            var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * mask
        c = self.model.config
        attention_mask = mask.long() if c.feat_extract_norm == "layer" else None
        frozen = self.training and float(self.batches_seen) < self.freeze_steps
        if self.training:
            self.batches_seen += 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            out = self.model(x, attention_mask=attention_mask, return_dict=True).last_hidden_state
        olens = conv_output_lengths(ilens, c.conv_kernel, c.conv_stride).clamp(max=out.size(1))
        return out, olens, None
