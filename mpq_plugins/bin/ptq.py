"""Post-training quantization: the float model's weights quantized at their MSE-optimal steps, no
fine-tuning. run.sh takes this path for a quant conf with `method: ptq`.

    python -m mpq_plugins.bin.ptq --asr_train_config exp/asr_x/config.yaml \\
        --asr_model_file exp/asr_x/valid.acc.ave.pth --quant_conf conf/quant/w8_ptq.yaml \\
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

from mpq_plugins.confio import ConfError, compose
from mpq_plugins.espnet.ptq import quantize_float_model
from mpq_plugins.quant import QuantConfigError, quantized_modules


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="config.yaml of the float model")
    p.add_argument("--asr_model_file", required=True, help="its checkpoint")
    p.add_argument("--quant_conf", required=True, help="a quant conf with method: ptq")
    p.add_argument("--out", required=True, help="checkpoint to write (config.yaml goes beside it)")
    a = p.parse_args(argv)
    try:
        conf = compose(a.quant_conf)
        if conf["method"] != "ptq":
            raise ValueError(f"{a.quant_conf}: method {conf['method']}, not ptq")
        model, conf = quantize_float_model(a.asr_train_config, a.asr_model_file, conf["quantization"])
    except (ValueError, OSError, QuantConfigError, ConfError) as e:
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
