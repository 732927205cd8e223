"""Check a Kaldi data dir, one line per problem naming the file and line:
    python -m mpq_plugins.bin.validate_data_dir --data DIR [--no_audio] [--sample_rate 16000] [--min_samples 1600]"""
import argparse
import sys

from mpq_plugins.datadir import DataDirError, validate_datadir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="the Kaldi data dir (wav.scp, text, utt2spk, spk2utt)")
    p.add_argument("--no_audio", action="store_true", help="skip opening every audio file")
    p.add_argument("--sample_rate", type=int, default=None, help="every audio file's sample rate")
    p.add_argument("--min_samples", type=int, default=0, help="the fewest samples an audio file may hold")
    a = p.parse_args(argv)
    try:
        n = validate_datadir(a.data, check_audio=not a.no_audio, sample_rate=a.sample_rate, min_samples=a.min_samples)
    except DataDirError as e:
        sys.exit(f"validate_data_dir: {e}")
    print(f"validate_data_dir: {a.data}: {n} utterances OK")


if __name__ == "__main__":
    main()
