"""Score a decode dir with sclite: python -m mpq_plugins.bin.score --data data/test --decode_dir DECODE_DIR

Reads <data>/text, <data>/utt2spk and <decode_dir>/text; writes <decode_dir>/score_{wer,cer}/{ref.trn,
hyp.trn,result.txt,*.sgml}, <decode_dir>/scoring.json (utterances without hypothesis) and prints the
Sum/Avg rows; scores newer than both texts and utt2spk are left as they are. Utterances with no
hypothesis are scored as deletions and reported; hypotheses for unknown utterances are an error. See mpq_plugins/eval/scoring.py.
"""
import argparse
import sys

from mpq_plugins.eval.scoring import ScoringError, score_decode_dir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the data dir decoded (text, utt2spk)")
    p.add_argument("--decode_dir", required=True, help="the decode dir: its text is scored, the scores go there")
    a = p.parse_args(argv)
    try:
        r = score_decode_dir(a.data, a.decode_dir)
    except (ScoringError, FileNotFoundError) as e:
        sys.exit(f"score: {e}")
    if r["missing"]:
        print(f"score: WARNING: {r['missing']} utterances of {a.data} have no hypothesis in {a.decode_dir}/text; "
              "scored as deletions", file=sys.stderr)
    for k in ("wer", "cer"):
        row = r[k]
        print(f"score: {a.decode_dir} {k.upper()} {row['Err']:.1f}% ({row['Snt']} sentences, {row['Wrd']} units)"
              + (" (up to date: newer than the text it scores)" if r.get("up_to_date") else ""))


if __name__ == "__main__":
    main()
