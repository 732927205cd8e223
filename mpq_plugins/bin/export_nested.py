"""The systems of a one-pass all-in-one run (model mpq_all_in_one), each as a plain ESPnet model of its own.

    # the systems' names, largest first (--twins: with _twin appended); of a run not started yet: its
    # training config (quant_config's) and the token list
    python -m mpq_plugins.bin.export_nested --config exp/asr_x_aio/config.yaml --list
    python -m mpq_plugins.bin.export_nested --config exp/asr_x_aio/train_config.yaml \
        --token_list data/token_list/char/tokens.txt --list
    # one nested system: its config.yaml and checkpoint (only its blocks, units and steps), and the run's
    # fine-tuning time as its compression time (the run made every system at once)
    python -m mpq_plugins.bin.export_nested --config exp/asr_x_aio/config.yaml \\
        --model exp/asr_x_aio/valid.acc.best.pth --system d2_ff0p5_w2 --out_dir exp/asr_x_aio_d2_ff0p5_w2
    # the float model cut the same way: where the system's twin starts its own fine-tuning
    python -m mpq_plugins.bin.export_nested --float --config exp/asr_x/config.yaml \\
        --model exp/asr_x/valid.acc.best.pth --aio_config exp/asr_x_aio/config.yaml --system d2_ff0p5_w2 \\
        --out_dir exp/asr_x_aio_d2_ff0p5_w2_twin/init

An output newer than its source checkpoint is left as it is (its packed file and decodes stay current).
"""
import argparse
import json
import os
import sys

import torch
import yaml

from mpq_plugins.confio import read_config, read_token_list
from mpq_plugins.espnet.checkpoint import load_checkpoint, load_state_strict
from mpq_plugins.espnet.load import build_from_config, load_asr_model
from mpq_plugins.espnet.nested import encoder_size, export_float, export_system
from mpq_plugins.quant import QuantConfigError
from mpq_plugins.quant.nested import AllInOneError


def write(out_dir, name, conf, state, where):
    build = build_from_config(dict(conf), where)           # the exported system must build and load strictly
    load_state_strict(build, state, where)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    with open(os.path.join(out_dir, "config.yaml.tmp"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    os.replace(os.path.join(out_dir, "config.yaml.tmp"), os.path.join(out_dir, "config.yaml"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config.yaml of the all-in-one run (with --float: of the float model)")
    p.add_argument("--model", help="its checkpoint")
    p.add_argument("--system", help="the system to export (a name of --list)")
    p.add_argument("--out_dir")
    p.add_argument("--list", action="store_true", help="print the systems' names, largest first")
    p.add_argument("--twins", action="store_true", help="with --list: the twins' names (<system>_twin)")
    p.add_argument("--token_list", help="with --list: the tokens, for a config without them (a training config)")
    p.add_argument("--float", action="store_true", help="cut the float model of --config to the system")
    p.add_argument("--aio_config", help="with --float: config.yaml of the all-in-one run")
    a = p.parse_args(argv)
    try:
        aio_conf = read_config(a.aio_config if a.float else a.config)
        if aio_conf.get("model") != "mpq_all_in_one":
            raise ValueError(f"{a.aio_config if a.float else a.config}: not the config of an all-in-one run "
                             "(model mpq_all_in_one)")
        if a.token_list:
            aio_conf.update(token_list=read_token_list(a.token_list), normalize=None)
        nested = build_from_config(dict(aio_conf), a.aio_config if a.float else a.config)
        cfg = nested.aio
        if a.list:
            print("\n".join(s.name + ("_twin" if a.twins else "") for s in cfg.system_list))
            return
        if not (a.model and a.system and a.out_dir):
            raise ValueError("--model, --system and --out_dir are needed")
        system = cfg.by_name(a.system)
        name = os.path.basename(a.model)
        out = os.path.join(a.out_dir, name)
        if os.path.exists(out) and os.path.getmtime(out) > os.path.getmtime(a.model):
            print(f"export_nested: {out} is up to date")
            return
        if a.float:
            float_model, float_conf = load_asr_model(a.config, a.model)
            if encoder_size(float_model) != encoder_size(nested):
                raise ValueError(f"{a.config}: its encoder ({encoder_size(float_model)}: blocks, units, heads) is not the one "
                                 f"the all-in-one run nests ({encoder_size(nested)})")
            conf, state = export_float(float_model, float_conf, cfg, system)
            write(a.out_dir, name, conf, state, f"{a.out_dir}/config.yaml")
        else:
            load_state_strict(nested, load_checkpoint(a.model), a.model)
            conf, state = export_system(nested, aio_conf, system)
            write(a.out_dir, name, conf, state, f"{a.out_dir}/config.yaml")
            run_time = os.path.join(os.path.dirname(os.path.abspath(a.model)), "compression_time.json")
            entries = []
            if os.path.exists(run_time):
                with open(run_time) as f:
                    entries = [e for e in json.load(f) if e["what"] != "pack"]
            with open(os.path.join(a.out_dir, "compression_time.json"), "w") as f:
                json.dump(entries, f, indent=1)     # the run's time; its own packing is added to it
    except (ValueError, OSError, QuantConfigError, AllInOneError) as e:
        sys.exit(f"export_nested: {e}")
    print(f"export_nested: {a.system} -> {a.out_dir}/{name}")


if __name__ == "__main__":
    main()
