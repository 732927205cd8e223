"""Stop before ESPnet resumes a run whose token list has changed since (run.sh, before each training).

    python -m mpq_plugins.bin.check_resume --exp_dir exp/asr_x --token_list data/token_list/char/tokens.txt
"""
import argparse
import sys

from mpq_plugins.confio import resume_conflict


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--token_list", required=True)
    a = p.parse_args(argv)
    problem = resume_conflict(a.exp_dir, a.token_list)
    if problem:
        sys.exit(f"check_resume: {problem}")


if __name__ == "__main__":
    main()
