"""Pack a trained model (float or quantized) into its bit-packed safetensors file; report sizes.

    python -m mpq_plugins.bin.pack --asr_train_config exp/asr_w4/config.yaml \
        --asr_model_file exp/asr_w4/valid.acc.ave.pth --out exp/asr_w4/packed.safetensors

Writes the file and <out without suffix>.size.json: bytes of the float32 model, of the file on
disk and by the bit accounting (quantized weights at their bit-widths, steps, float tensors),
compression ratio (float32 bytes / bytes on disk), average bits and the bits of every layer.
"""
import argparse
import json
import sys

from mpq_plugins.espnet.load import load_asr_model, pack_asr_model
from mpq_plugins.quant import QuantConfigError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True)
    p.add_argument("--asr_model_file", required=True)
    p.add_argument("--out", required=True, help="packed file (.safetensors)")
    a = p.parse_args(argv)
    if not a.out.endswith(".safetensors"):
        sys.exit(f"pack: --out {a.out}: the packed file's name must end in .safetensors")
    try:
        model, conf = load_asr_model(a.asr_train_config, a.asr_model_file)
        report = pack_asr_model(model, conf, a.out)
    except (ValueError, QuantConfigError) as e:
        sys.exit(f"pack: {e}")
    with open(a.out[: -len(".safetensors")] + ".size.json", "w") as f:
        json.dump(report, f, indent=1)
    print(f"pack: {a.out}: {report['disk_bytes']} bytes on disk ({report['accounted_bytes']} by the bit "
          f"accounting), {report['compression_ratio']:.2f}x smaller than float32 "
          f"({report['fp32_bytes']} bytes), {report['avg_weight_bits']:.2f} bits a quantized weight")


if __name__ == "__main__":
    main()
