"""Print what in a run's configs needs the transformers package, one line each (nothing: it can be hidden).

    python -m mpq_plugins.bin.needs_transformers conf/train_asr_conformer.yaml conf/quant/w4.yaml --args "--encoder hf_ssl"

run.sh exports MPQ_HIDE_TRANSFORMERS=1 when this prints nothing (mpq_plugins/espnet/needs_transformers.py).
"""
import argparse

from mpq_plugins.espnet.needs_transformers import reasons


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="ESPnet training, fine-tuning, quant and LM yaml files")
    p.add_argument("--args", default="", help="extra ESPnet training options, as one string")
    a = p.parse_args(argv)
    for line in reasons(a.configs, a.args):
        print(line)


if __name__ == "__main__":
    main()
