"""Write a system's record, exp/<system>/system.yaml (mpq_plugins.espnet.system): the last step of
stage 6, after packing.

    python -m mpq_plugins.bin.record_system --exp_dir exp/asr_x_w4 --quant_conf conf/quant/w4.yaml \\
        --source_checkpoint exp/asr_x/valid.acc.ave.pth
    python -m mpq_plugins.bin.record_system --exp_dir exp/asr_x --source_checkpoint exp/asr_x/valid.acc.ave.pth
    # a nested system of an all-in-one run names its twin (recorded before it)
    python -m mpq_plugins.bin.record_system --exp_dir exp/asr_x_aio_d2_ff1_w4 --quant_conf conf/quant/aio.yaml \
        --source_checkpoint exp/asr_x/valid.acc.ave.pth --twin_system exp/asr_x_aio_d2_ff1_w4_twin
"""
import argparse
import sys

from mpq_plugins.confio import ConfError
from mpq_plugins.espnet.system import write_system


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--quant_conf", default=None, help="the quant conf that made it (none: the float baseline)")
    p.add_argument("--source_checkpoint", required=True, help="the float checkpoint it was made from")
    p.add_argument("--twin", action="store_true", help="an all_in_one conf's system trained alone (its twin)")
    p.add_argument("--twin_system", default=None, help="a nested system of an all_in_one conf: its twin's exp dir")
    a = p.parse_args(argv)
    try:
        r = write_system(a.exp_dir, a.quant_conf, a.source_checkpoint, a.twin, a.twin_system)
    except (ValueError, OSError, ConfError) as e:
        sys.exit(f"record_system: {e}")
    print(f"record_system: {a.exp_dir}/system.yaml: {r['description']}, {r['sizes']['disk_bytes']} bytes, "
          f"{r['sizes']['compression_ratio']:.2f}x")


if __name__ == "__main__":
    main()
