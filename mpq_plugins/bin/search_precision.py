"""Stage 1 of the two-stage mixed-precision methods: choose every layer's bit-width, write them as a
quant conf whose `quantization:` section has them fixed (stage 2 is ordinary QAT with it:
mpq_plugins.bin.quant_config --bits).

    # KL or Hessian-trace sensitivities of the float model on held-out utterances, exact knapsack
    python -m mpq_plugins.bin.search_precision --quant_conf conf/quant/mpq_kl_3bit.yaml \\
        --asr_train_config exp/asr_x/config.yaml --asr_model_file exp/asr_x/valid.acc.ave.pth \\
        --data data/dev --out exp/asr_x_mpq_kl_3bit/bits.yaml
    # differentiable search: the allocation a finished supernet run fixed
    python -m mpq_plugins.bin.search_precision --quant_conf conf/quant/mpq_supernet_3bit.yaml \\
        --supernet_dir exp/asr_x_mpq_supernet_3bit/search --out exp/asr_x_mpq_supernet_3bit/bits.yaml

Writes bits.yaml and, beside it, search.json (the sensitivities or probabilities, the allocation,
its average bits and the budget). With --cache_dir, KL and Hessian sensitivities are computed once
per float model, layers, candidates and held-out data, and read by every later budget or seed;
search.json then names the file and the seconds of the search that computed them.
"""
import argparse
import json
import os
import sys

import yaml

from mpq_plugins.confio import ConfError, compose
from mpq_plugins.espnet.load import load_asr_model
from mpq_plugins.espnet.sensitivity import sensitivity_search, supernet_allocation
from mpq_plugins.quant import QuantConfig, QuantConfigError, with_fixed_bits
from mpq_plugins.quant.allocation import BudgetError


def progress(i, n, name):
    print(f"search_precision: {i}/{n} layers ({name})", file=sys.stderr, flush=True)


def search(a):
    """(method, quantization section, {layer: bits}, record) of the quant conf's search."""
    conf = compose(a.quant_conf)
    method = conf["method"]
    qcfg = QuantConfig.from_dict(conf["quantization"], f"{a.quant_conf}: quantization")
    if method in ("kl", "hessian"):
        if not (a.asr_train_config and a.asr_model_file and a.data):
            raise ValueError("--asr_train_config, --asr_model_file and --data are needed")
        model, model_conf = load_asr_model(a.asr_train_config, a.asr_model_file)
        bits, record = sensitivity_search(method, model, model_conf, qcfg, a.data, progress,
                                          model_file=a.asr_model_file, cache_dir=a.cache_dir)
    elif method == "supernet":
        if not a.supernet_dir:
            raise ValueError("--supernet_dir is needed for method supernet")
        bits, record = supernet_allocation(a.supernet_dir)
    else:
        raise ValueError(f"{a.quant_conf}: method {method} has no search stage")
    return method, conf["quantization"], bits, record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quant_conf", required=True)
    p.add_argument("--asr_train_config")
    p.add_argument("--asr_model_file")
    p.add_argument("--data", help="held-out Kaldi data dir for the sensitivities")
    p.add_argument("--supernet_dir", help="exp dir of a finished supernet run (method supernet)")
    p.add_argument("--cache_dir", help="kl, hessian: read the sensitivities from here when a search of the same model, "
                                       "layers, candidates and data computed them; else compute and keep them here")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        method, quant, bits, record = search(a)
    except (ValueError, OSError, QuantConfigError, BudgetError, ConfError) as e:
        sys.exit(f"search_precision: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        f.write(f"# bit-widths chosen by {method} for {a.quant_conf} (mpq_plugins.bin.search_precision)\n")
        yaml.safe_dump({"quantization": with_fixed_bits(quant, bits)}, f, sort_keys=False)
    os.replace(a.out + ".tmp", a.out)
    record.update(method=method, budget=quant["mixed_precision"]["budget"], bits=bits)
    with open(os.path.join(os.path.dirname(os.path.abspath(a.out)), "search.json"), "w") as f:
        json.dump(record, f, indent=1)
    counts = {b: sum(1 for v in bits.values() if v == b) for b in sorted(set(bits.values()))}
    print(f"search_precision: {a.out}: {len(bits)} layers, {record['avg_bits']:.3f} average bits, "
          f"layers per bit-width {counts}")


if __name__ == "__main__":
    main()
