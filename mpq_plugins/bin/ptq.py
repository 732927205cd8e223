"""Post-training quantization: the float model's weights quantized at their MSE-optimal steps, no
fine-tuning. run.sh takes this path for a quant conf with `max_epoch: 0`.

    python -m mpq_plugins.bin.ptq --float_config exp/asr_x/config.yaml \\
        --float_model exp/asr_x/valid.acc.ave.pth --quant_conf conf/quant/w8_ptq.yaml \\
        --out exp/asr_x_w8_ptq/valid.acc.ave.pth

Writes the checkpoint (every step set) and, beside it, config.yaml: the float model's config with
the quant conf's `quantization:` section, which is what the packer and the decoder rebuild.
Nothing is written when the float checkpoint does not fit the config.
"""
import argparse
import os
import sys

import torch
import yaml

from mpq_plugins.espnet_task import build_from_config, load_checkpoint, load_state_strict, read_config
from mpq_plugins.quant import QuantConfigError
from mpq_plugins.quant.config import quantized_modules


def quantize_float_model(float_config, float_model, quant):
    """(quantized model with every step initialised, its config dict) from a float checkpoint."""
    conf = read_config(float_config)
    if conf.get("quantization"):
        raise ValueError(f"{float_config}: already a quantized system (start from the float model)")
    conf = {**conf, "quantization": quant}
    model = build_from_config(conf, float_config)
    state = load_checkpoint(float_model)
    unset = {k: v for k, v in model.state_dict().items() if "_quantizer." in k and k not in state}
    load_state_strict(model, {**state, **unset}, f"{float_model} (with {float_config})")
    for name, mod in quantized_modules(model).items():
        if mod.input_quantizer is not None:
            raise ValueError(f"quantization: act_bits needs calibration data; post-training quantization "
                             f"here covers weights only ({name})")
        mod.weight_quantizer.init_from(mod.weight.detach())
    return model, conf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float_config", required=True, help="config.yaml of the float model")
    p.add_argument("--float_model", required=True, help="its checkpoint")
    p.add_argument("--quant_conf", required=True, help="a quant conf (its quantization: section)")
    p.add_argument("--out", required=True, help="checkpoint to write (config.yaml goes beside it)")
    a = p.parse_args(argv)
    try:
        quant = read_config(a.quant_conf).get("quantization")
        if not quant:
            raise ValueError(f"{a.quant_conf}: no quantization: section")
        if "mixed_precision" in quant:
            raise ValueError(f"{a.quant_conf}: post-training quantization takes fixed bit-widths "
                             "(no mixed_precision section)")
        model, conf = quantize_float_model(a.float_config, a.float_model, quant)
    except (ValueError, OSError, QuantConfigError) as e:
        sys.exit(f"ptq: {e}")
    outdir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(outdir, exist_ok=True)
    torch.save(model.state_dict(), a.out + ".tmp")
    with open(os.path.join(outdir, "config.yaml.tmp"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    os.replace(os.path.join(outdir, "config.yaml.tmp"), os.path.join(outdir, "config.yaml"))
    os.replace(a.out + ".tmp", a.out)
    print(f"ptq: {a.out}: {len(quantized_modules(model))} layers quantized at their MSE-optimal steps")


if __name__ == "__main__":
    main()
