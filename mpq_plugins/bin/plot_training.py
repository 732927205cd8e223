"""Plot the learning curve of an ESPnet training run and summarise it.

    python -m mpq_plugins.bin.plot_training --exp_dir exp/asr_x

Reads <exp_dir>/train.log and the logs of earlier, resumed runs (train.log.1, .2, ...); writes
<exp_dir>/training_curve.png and <exp_dir>/training_summary.json (epochs, best validation accuracy
and its epoch, training wall-clock seconds). See mpq_plugins/eval/training_log.py.
"""
import argparse
import sys

from mpq_plugins.eval.training_log import TrainingLogError, plot_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="the training run's experiment dir")
    a = p.parse_args(argv)
    try:
        summary = plot_training(a.exp_dir)
    except (TrainingLogError, OSError) as e:
        sys.exit(f"plot_training: {e}")
    print(f"plot_training: {a.exp_dir}: {summary}")


if __name__ == "__main__":
    main()
