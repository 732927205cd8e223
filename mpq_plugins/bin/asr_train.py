"""ESPnet's asr_train with mpq-asr's `quantization:` config section (QAT from a float checkpoint).

    python -m mpq_plugins.bin.asr_train --config exp/asr_w4/train_config.yaml \
        --init_param exp/asr_fp32/valid.acc.ave.pth [every espnet2.bin.asr_train option]

Run it through espnet2.bin.launch, as run.sh does, for several GPUs, nodes or Slurm. A
mixed-precision run ends with plain quantized checkpoints at the learnt bit-widths
(mpq_plugins.espnet.task).
"""
import sys

from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.quant import QuantConfigError


def main(cmd=None):
    try:
        QuantASRTask.main(cmd=cmd)
    except QuantConfigError as e:
        sys.exit(f"asr_train: {e}")


if __name__ == "__main__":
    main()
