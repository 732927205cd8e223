"""Building and loading ESPnet ASR models: from a config and checkpoint, strictly and with
weights_only=True (unlike ESPnet's `build_model_from_file`, whose strict=False would decode a float
model in place of a quantized one), and to and from packed files (mpq_plugins.quant.packing), which
carry the model-building part of the config in their header."""
import argparse
import os
import tempfile

import numpy as np
import yaml
from espnet2.tasks.lm import LMTask

from mpq_plugins.confio import read_config
from mpq_plugins.espnet.checkpoint import load_checkpoint, load_state_strict
from mpq_plugins.espnet.ssl import for_checkpoint
from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.quant import QuantConfigError
from mpq_plugins.quant.packing import PackedFileError, export_packed, read_packed, unpack_state

# the config keys that build the model and its tokenizer; training options stay out of the packed file
MODEL_KEYS = ("token_list", "token_type", "bpemodel", "input_size", "frontend", "frontend_conf", "specaug",
              "normalize", "normalize_conf", "model", "model_conf", "preencoder", "preencoder_conf", "encoder",
              "encoder_conf", "postencoder", "postencoder_conf", "decoder", "decoder_conf", "ctc_conf",
              "joint_net_conf", "quantization", "init")


def build_from_config(conf, where):
    """The model of an ESPnet config dict, to load a checkpoint into; options it leaves out take the
    parser's defaults. A foundation-model encoder is built without its pretrained weights (the
    checkpoint's follow)."""
    args = QuantASRTask.get_parser().parse_args([])
    vars(args).update(conf)
    args.encoder_conf = for_checkpoint(conf.get("encoder"), args.encoder_conf)
    args.config = where
    try:
        return QuantASRTask.build_model(args)
    except QuantConfigError:
        raise
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{where}: cannot build the ESPnet model: {e}") from None


def self_contained(model, conf):
    """The model config with what rebuilds it from nothing else: a foundation-model encoder's
    transformers config and waveform normalization (not the directory they came from)."""
    conf = model_config(conf)
    if conf.get("encoder") == "hf_ssl":
        conf["encoder_conf"] = {**(conf.get("encoder_conf") or {}), "hf_config": model.encoder.hf_config(),
                                "pretrained": False, "normalize_waveform": model.encoder.normalize_waveform}
    return conf


def load_asr_model(config_path, model_file, device="cpu"):
    """(model in eval mode, config dict) from an ESPnet config.yaml and a .pth checkpoint or packed file."""
    if str(model_file).endswith(".safetensors"):
        return load_packed(model_file, device)
    conf = read_config(config_path)
    model = build_from_config(conf, str(config_path))
    load_state_strict(model, load_checkpoint(model_file, device), str(model_file))
    return model.to(device).eval(), conf


def load_lm(config_path, model_file, device="cpu"):
    """An ESPnet LM (espnet2.bin.lm_train), loaded strictly with weights_only=True."""
    model = LMTask.build_model(argparse.Namespace(**read_config(config_path)))
    load_state_strict(model, load_checkpoint(model_file, device), str(model_file))
    return model.to(device).eval()


def model_config(conf):
    return {k: conf[k] for k in MODEL_KEYS if k in conf}


def pack_asr_model(model, conf, path):
    """Write an ESPnet model (float or quantized) to its packed file; returns the size report."""
    meta = {"config": yaml.safe_dump(self_contained(model, conf), sort_keys=True)}
    state = model.state_dict()
    if "normalize.mean" in state:   # global MVN: the feature dimension its buffers are rebuilt with
        meta["mvn_dim"] = str(state["normalize.mean"].numel())
    return export_packed(model, path, meta)


def load_packed(path, device="cpu"):
    """(model in eval mode, model config dict) rebuilt from a packed file."""
    tensors, meta, bits = read_packed(path)
    try:
        conf = yaml.safe_load(meta["config"])
        mvn_dim = int(meta["mvn_dim"]) if "mvn_dim" in meta else None
    except (KeyError, yaml.YAMLError, ValueError) as e:
        raise PackedFileError(f"{path}: damaged header ({e})") from None
    with tempfile.TemporaryDirectory() as tmp:
        conf = dict(conf)
        if conf.get("normalize") == "global_mvn":
            # ESPnet builds global MVN from a statistics file; its buffers then come from the packed file
            stats = os.path.join(tmp, "feats_stats.npz")
            dim = mvn_dim or (conf.get("frontend_conf") or {}).get("n_mels", 80)
            np.savez(stats, count=np.array(1.0), sum=np.zeros(dim), sum_square=np.ones(dim))
            conf["normalize_conf"] = {**(conf.get("normalize_conf") or {}), "stats_file": stats}
        model = build_from_config(conf, str(path))
    state = unpack_state(model, tensors, bits, path)
    try:
        load_state_strict(model, state, str(path))
    except ValueError as e:
        raise PackedFileError(str(e)) from None
    return model.to(device).eval(), conf
