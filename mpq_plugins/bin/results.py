"""Write a recipe's RESULTS.md (and its plots) from what the earlier stages left in exp/.

    python -m mpq_plugins.bin.results --baseline exp/asr_conf \\
        --systems "exp/asr_conf_w8 exp/asr_conf_w4 exp/asr_conf_fp32_cont" --main_set test --out RESULTS.md

Each system is read from its exp dir's system.yaml and score files; see mpq_plugins/eval/report.py.
"""
import argparse
import sys

from mpq_plugins.eval.report import report, summary
from mpq_plugins.eval.sctk import ScoringError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the float32 system's exp dir")
    p.add_argument("--systems", default="", help="the other systems' exp dirs (space-separated)")
    p.add_argument("--main_set", default="test", help="the test set of the lossless verdict")
    p.add_argument("--valid_set", default="dev")
    p.add_argument("--decode", default="decode_asr_packed",
                   help="decode dir names inside each system, space-separated, the main decode first")
    p.add_argument("--out", default="RESULTS.md")
    a = p.parse_args(argv)
    try:
        lines = report(a.baseline, a.systems.split(), a.main_set, a.valid_set, a.out, a.decode)
    except (ScoringError, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"results: {e}")
    print("\n".join(summary(lines)))


if __name__ == "__main__":
    main()
