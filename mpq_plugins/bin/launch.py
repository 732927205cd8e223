"""ESPnet's launcher (espnet2.bin.launch), unchanged, run so that a Ctrl-C ends in one line.

    python -m mpq_plugins.bin.launch [every espnet2.bin.launch option] -- python -m mpq_plugins.bin.asr_train ...

ESPnet's launcher waits for its jobs in a loop; a Ctrl-C (which its jobs get too) there printed a
KeyboardInterrupt traceback to the user. Everything else is ESPnet's.
"""
import sys

from espnet2.bin.launch import main

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("launch: interrupted (Ctrl-C); the jobs were stopped with it", file=sys.stderr)
        sys.exit(130)
