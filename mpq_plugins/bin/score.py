"""Score a decode dir with sclite: python -m mpq_plugins.bin.score --data data/test --dir DECODE_DIR

Reads <data>/text, <data>/utt2spk and <dir>/text; writes <dir>/score_{wer,cer}/{ref.trn,hyp.trn,
result.txt,*.sgml}, <dir>/scoring.json (utterances without hypothesis) and prints the Sum/Avg rows. Utterances with no hypothesis are scored as deletions
and reported; hypotheses for unknown utterances are an error.
"""
import argparse
import json
import os
import sys

from mpq_plugins.scoring import ScoringError, score_dir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--dir", required=True)
    a = p.parse_args(argv)
    try:
        r = score_dir(os.path.join(a.data, "text"), os.path.join(a.dir, "text"),
                      os.path.join(a.data, "utt2spk"), a.dir)
    except (ScoringError, FileNotFoundError) as e:
        sys.exit(f"score: {e}")
    with open(os.path.join(a.dir, "scoring.json"), "w") as f:   # read by the report: rows with missing hyps
        json.dump({"data": a.data, "missing": r["missing"]}, f)
    if r["missing"]:
        print(f"score: WARNING: {r['missing']} utterances of {a.data} have no hypothesis in {a.dir}/text; "
              "scored as deletions", file=sys.stderr)
    for k in ("wer", "cer"):
        row = r[k]
        print(f"score: {a.dir} {k.upper()} {row['Err']:.1f}% ({row['Snt']} sentences, {row['Wrd']} units)")


if __name__ == "__main__":
    main()
