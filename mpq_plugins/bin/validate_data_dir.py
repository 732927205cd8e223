"""Check a Kaldi data dir: python -m mpq_plugins.bin.validate_data_dir --data DIR [--no_audio]"""
import argparse
import sys

from mpq_plugins.datadir import DataDirError, validate_datadir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="the Kaldi data dir (wav.scp, text, utt2spk, spk2utt)")
    p.add_argument("--no_audio", action="store_true", help="skip opening every audio file")
    a = p.parse_args(argv)
    try:
        n = validate_datadir(a.data, check_audio=not a.no_audio)
    except DataDirError as e:
        sys.exit(f"validate_data_dir: {e}")
    print(f"validate_data_dir: {a.data}: {n} utterances OK")


if __name__ == "__main__":
    main()
