"""Compare what a gradient-based precision search sees at its start with what quantizing a layer does
(mpq_plugins.espnet.first_order): per layer and candidate bit-width, the first-order loss change, its part
along the weight (the norm change alone) and the actual loss change, on held-out utterances.

    python -m mpq_plugins.bin.first_order_check --asr_train_config exp/asr_x/config.yaml \\
        --asr_model_file exp/asr_x/valid.acc.best.pth --data data/dev \\
        --layers ctc.ctc_lo encoder.encoders.0.feed_forward.w_1 --out results/first_order_check.md
    # what a search on the teacher's KL sees once the other layers are at a system's bits
    python -m mpq_plugins.bin.first_order_check ... --loss teacher_kl \\
        --rest_bits_from exp/asr_x_mpq_one_stage_2bit_tuned --out results/first_order_check_kl.md

Writes the markdown table to --out and the figures beside it (.json).
"""
import argparse
import json
import os
import sys

import torch

from mpq_plugins.espnet.first_order import LOSSES, first_order_check, markdown
from mpq_plugins.espnet.load import load_asr_model
from mpq_plugins.quant.numerics import parse_bits
from mpq_plugins.record import read_system


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True)
    p.add_argument("--asr_model_file", required=True, help="the float model (a .pth checkpoint)")
    p.add_argument("--data", required=True, help="held-out Kaldi data dir")
    p.add_argument("--layers", nargs="+", required=True, help="module names of weight layers")
    p.add_argument("--candidates", nargs="+", default=["1", "1.6", "2", "3", "4", "8"])
    p.add_argument("--n_utts", type=int, default=32)
    p.add_argument("--loss", choices=LOSSES, default="espnet",
                   help="the model's own training loss, or the KL of the float model's posteriors to the model's")
    p.add_argument("--rest_bits_from", default=None, metavar="SYSTEM_DIR",
                   help="quantize every other layer at the bits of this system's record (system.yaml, "
                        "bits_per_layer) first")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    try:
        candidates = [parse_bits(c) for c in a.candidates]
        rest = read_system(a.rest_bits_from)["bits_per_layer"] if a.rest_bits_from else None
        model, conf = load_asr_model(a.asr_train_config, a.asr_model_file)
        result = first_order_check(model, conf, a.data, a.layers, candidates, a.n_utts, loss=a.loss, rest=rest)
    except (ValueError, OSError) as e:   # a bad record is a ValueError too
        sys.exit(f"first_order_check: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    result["model"], result["rest_bits_from"] = a.asr_model_file, a.rest_bits_from
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(result, f, indent=1)
    title = (f"First-order search signal against quantization ({a.asr_model_file}, {a.data}"
             + (f", the other layers at the bits of {a.rest_bits_from}" if a.rest_bits_from else "") + ")")
    with open(a.out, "w") as f:
        f.write("\n".join(markdown(result, title)))
    print(f"first_order_check: {a.out}")


if __name__ == "__main__":
    main()
