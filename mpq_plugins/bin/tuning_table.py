"""Write the tuning record of the mixed-precision searches: per method, its conf and the variants of one
option (conf/quant/tuning/), judged on the held-out set (mpq_plugins/eval/tuning.py).

    python -m mpq_plugins.bin.tuning_table --valid_set dev --decode decode_asr_packed --out results/tuning.md \\
        --groups "exp/asr_x_mpq_kl_2p5bit,exp/asr_x_mpq_kl_2p5bit_utts8,exp/asr_x_mpq_kl_2p5bit_utts32 ..."

--groups: space-separated groups, each the comma-separated exp dirs of one method, its conf's run first.
--kept FILE: also write, per group, the method's quant conf and the quant conf of the run kept (one pair a
line), for scripts that run each method as its tuning left it.
"""
import argparse
import sys

from mpq_plugins.datadir import write_atomic
from mpq_plugins.eval.sctk import ScoringError
from mpq_plugins.eval.tuning import group_rows, kept_confs, tuning_table
from mpq_plugins.record import RecordError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", required=True, help="e.g. \"exp/a,exp/a_lr0p5,exp/a_lr8 exp/b,exp/b_utts8\"")
    p.add_argument("--valid_set", default="dev")
    p.add_argument("--decode", default="decode_asr_packed")
    p.add_argument("--title", default="Tuning of the mixed-precision searches")
    p.add_argument("--out", required=True)
    p.add_argument("--kept", default="", help="file: '<method's quant conf> <the kept run's quant conf>' a line")
    a = p.parse_args(argv)
    groups = [g.split(",") for g in a.groups.split()]
    try:
        grouped = [group_rows(g, a.decode, a.valid_set) for g in groups]
        table, kept = tuning_table(grouped, a.valid_set), kept_confs(grouped)
    except (ScoringError, RecordError, FileNotFoundError, ValueError) as e:
        sys.exit(f"tuning_table: {e}")
    args = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python -m mpq_plugins.bin.tuning_table"] + [f'"{x}"' if " " in x else x for x in args])
    lines = [f"# {a.title}", "", f"Written by `{cmd}` from the runs' records and sclite alignments. Each method's "
             f"runs differ in one option and nothing else (one seed, one fine-tuning from the same model), judged on "
             f"{a.valid_set} under `{a.decode}`; the test sets take no part. The value kept is the conf's own unless "
             f"another is significantly better on {a.valid_set} (MAPSSWE, p < 0.05); the lowest WER is marked beside "
             "it.", ""] + table
    write_atomic(a.out, "\n".join(lines) + "\n")
    if a.kept:
        write_atomic(a.kept, "".join(f"{conf} {k}\n" for conf, k in kept))
    print("\n".join(table))


if __name__ == "__main__":
    main()
