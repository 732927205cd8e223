"""A CTC fine-tuning step of the paper-scale wav2vec2.0-base conf, float and quantization-aware; writes its
figures to a markdown file (and json beside it).

    python -m mpq_plugins.bin.benchmark_ssl_step --out results/benchmark_ssl_step.md [--device cuda]
        [--batch 8 --seconds 15 --repeats 5]

The model is egs/librispeech_100_ssl/conf/train_asr_wav2vec2_base.yaml with wav2vec2.0-base's architecture
(transformers' default Wav2Vec2Config: 12 layers of 768, 3072 feed-forward units, 95 M parameters) and random
weights: no model directory is needed and nothing is downloaded; time only. Each system's step is forward,
backward and Adam on the same batch, in training mode (the conf's masking and layer-drop): float32, weight-only
QAT at 8 and 4 bits, and one-stage mixed precision while it searches (candidates 2/4/8, one quantizer per
candidate over the shared weight). Timings are medians of repeats, the systems taking turns; ratios are against
float32 in the same run.
"""
import argparse
import os
import time

import torch

from mpq_plugins.bin.benchmark_quant import interleaved_medians, steady_allocator, write_report
from mpq_plugins.confio import read_config
from mpq_plugins.espnet.load import build_from_config
from mpq_plugins.eval.report import environment

CONF = "egs/librispeech_100_ssl/conf/train_asr_wav2vec2_base.yaml"
SYSTEMS = {
    "float32": (None, "espnet"),
    "w8 (weight-only QAT)": ({"weight_bits": 8}, "espnet"),
    "w4 (weight-only QAT)": ({"weight_bits": 4}, "espnet"),
    "one-stage mixed precision, searching (2/4/8)": (
        {"weight_bits": 4, "mixed_precision": {"candidates": [2, 4, 8], "budget": {"avg_bits": 3.5},
                                               "search_steps": 1000}}, "mpq_espnet"),
}


# a few-layer model of the same kind: the script's own check (tests/test_ssl.py), no timing to read
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[16, 16, 16],
            conv_stride=[5, 4, 2], conv_kernel=[10, 8, 4], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)


def build(conf_path, quant, model, device, arch="base"):
    import transformers
    torch.manual_seed(0)
    conf = read_config(conf_path)
    enc = dict(conf["encoder_conf"])
    enc["hf_config"] = transformers.Wav2Vec2Config(**(TINY if arch == "tiny" else {})).to_dict()   # random weights
    if arch == "tiny":   # feature masks as long as the conf's do not fit in 32 channels
        enc["overrides"] = {**(enc.get("overrides") or {}), "mask_feature_prob": 0.0}
    conf.update(encoder_conf=enc, quantization=quant, model=model, teacher_kl_weight=0.0,
                token_list=["<blank>", "<unk>"] + [chr(ord("A") + i) for i in range(26)] + ["'", "<space>", "<sos/eos>"])
    m = build_from_config(conf, conf_path).to(device)
    return m.train(), sum(p.numel() for p in m.parameters())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/benchmark_ssl_step.md")
    p.add_argument("--conf", default=CONF)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="utterances a batch (default: 8 on a GPU, 2 on CPU)")
    p.add_argument("--seconds", type=float, default=None, help="seconds an utterance (default: 15 GPU, 4 CPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--arch", choices=("base", "tiny"), default="base",
                   help="base: wav2vec2.0-base's architecture; tiny: a check that the script runs")
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    batch, seconds = a.batch or (8 if gpu else 2), a.seconds or (15.0 if gpu else 4.0)
    res = {"device": a.device, "batch": batch, "seconds": seconds, "threads": torch.get_num_threads(),
           "steady_allocator": steady_allocator(), "gpu": torch.cuda.get_device_name() if gpu else None}
    t0 = time.time()
    g = torch.Generator().manual_seed(1)
    n = int(seconds * 16000)
    speech = (torch.randn(batch, n, generator=g) * 0.1).to(a.device)
    lengths = torch.full((batch,), n, device=a.device)
    text = torch.randint(2, 29, (batch, int(seconds * 15)), generator=g).to(a.device)
    text_lengths = torch.full((batch,), text.size(1), device=a.device)
    steps, params = {}, {}
    for name, (quant, model_kind) in SYSTEMS.items():
        print(f"benchmark_ssl_step: building {name} ...", flush=True)
        if quant and "mixed_precision" in quant and a.arch == "tiny":   # its header alone is 2 bits a parameter
            quant = {**quant, "mixed_precision": {**quant["mixed_precision"], "budget": {"ratio": 2.0}}}
        model, params[name] = build(a.conf, quant, model_kind, a.device, a.arch)
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-5)

        def step(model=model, opt=opt):
            opt.zero_grad()
            loss, _, _ = model(speech, lengths, text, text_lengths)
            loss.backward()
            opt.step()
            if gpu:
                torch.cuda.synchronize()
        steps[name] = step
    print("benchmark_ssl_step: timing ...", flush=True)
    res["step_s"] = interleaved_medians(steps, a.repeats, warmup=1)
    res["params"] = params
    base = res["step_s"]["float32"]
    where = res["gpu"] or f"the CPU ({res['threads']} threads)"
    lines = ["# A CTC fine-tuning step of wav2vec2.0-base: float and quantization-aware", "",
             f"Written by `python -m mpq_plugins.bin.benchmark_ssl_step --out {a.out} --device {a.device} --arch {a.arch}` in "
             f"{time.time() - t0:.0f} s: {a.conf} with "
             + ("wav2vec2.0-base's architecture" if a.arch == "base" else "a tiny architecture (a check, not a timing)")
             + " and random weights "
             f"({params['float32'] / 1e6:.1f} M parameters), a batch of {batch} x {seconds:g} s, forward + backward + "
             f"Adam in training mode, on {where}. "
             "Medians of repeats, the systems taking turns; ratios against float32 in the same run.", "",
             "## Environment", ""] + environment() + ["", "|system|step (s)|over float32|", "|---|---|---|"]
    lines += [f"|{k}|{v:.3f}|{v / base:.2f}x|" for k, v in res["step_s"].items()]
    write_report(a.out, lines, res)


if __name__ == "__main__":
    main()
