"""Two systems against each other: python -m mpq_plugins.bin.compare_systems EXP_A EXP_B [--out FILE]

For every decode and test set both exp dirs were scored on: the WERs, B's errors minus A's, MAPSSWE
(sc_stats when SCTK is installed; its files in EXP_B/<decode>/<set>/mapsswe_vs_<A>/) and a paired
bootstrap 95% interval of B's WER minus A's. Prints a markdown table (and writes it to --out).
See mpq_plugins/eval/pair.py.
"""
import argparse
import sys

from mpq_plugins.datadir import write_atomic
from mpq_plugins.eval.pair import compare_pair, markdown
from mpq_plugins.eval.sctk import ScoringError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="exp dir of system A (the one compared against)")
    p.add_argument("b", help="exp dir of system B")
    p.add_argument("--out", help="also write the table here")
    a = p.parse_args(argv)
    try:
        text = markdown(a.a, a.b, compare_pair(a.a, a.b))
    except (ScoringError, OSError) as e:
        sys.exit(f"compare_systems: {e}")
    if a.out:
        write_atomic(a.out, text)
    print(text, end="")


if __name__ == "__main__":
    main()
