"""Write the training config of a quantized system: the float model's config with a quant conf on top.

    python -m mpq_plugins.bin.quant_config --base conf/train_asr_conformer.yaml --conf conf/finetune.yaml \
        --conf conf/quant/w4.yaml --token_list data/token_list/char/tokens.txt \
        --out exp/asr_train_asr_conformer_w4/train_config.yaml

Each --conf is laid over the ones before it, then each --set KEY=VALUE.

The quant conf holds a `quantization:` section (mpq_plugins/quant/config.py) and any ESPnet training
options to change for the fine-tuning (max_epoch, optim_conf, ...); a conf without `quantization:`
continues float training (the control system). The quantization section is checked against the
real model before anything is written, so a bad bit-width or pattern fails before training starts.
"""
import argparse
import os
import sys

import yaml

from mpq_plugins.espnet_task import QuantASRTask, build_from_config, read_config
from mpq_plugins.quant import QuantConfigError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the float model's training config")
    p.add_argument("--conf", required=True, action="append", help="fine-tuning options, then the quant conf")
    p.add_argument("--token_list", required=True, help="token list (to build the model for the check)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more option on top of every conf (the value is read as yaml)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        merged = read_config(a.base)
        known = set(vars(QuantASRTask.get_parser().parse_args([])))
        for path in a.conf:
            conf = read_config(path)
            unknown = sorted(set(conf) - known)
            if unknown:
                raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}")
            merged.update(conf)
        for kv in a.set:
            key, eq, value = kv.partition("=")
            if not eq or key not in known:
                raise ValueError(f"--set {kv}: expected KEY=VALUE with an ESPnet training option as KEY")
            merged[key] = yaml.safe_load(value)
        with open(a.token_list, encoding="utf-8") as f:
            tokens = [t.strip() for t in f if t.strip()]
        build_from_config({**merged, "token_list": tokens, "normalize": None}, a.conf[-1])
    except (ValueError, OSError, QuantConfigError) as e:
        sys.exit(f"quant_config: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"# {a.base} with {' and '.join(a.conf)} on top (mpq_plugins.bin.quant_config)\n")
        yaml.safe_dump(merged, f, sort_keys=False)
    os.replace(a.out + ".tmp", a.out)
    print(f"quant_config: {a.out}")


if __name__ == "__main__":
    main()
