"""Reading an ESPnet-style yaml config, without importing ESPnet (light entry points use it too)."""
import yaml


def read_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: not an ESPnet config (expected a mapping)")
    return conf


def is_post_training(conf):
    """A quant conf with `max_epoch: 0`: no fine-tuning, the float weights quantized (mpq_plugins.bin.ptq)."""
    return conf.get("max_epoch") == 0
