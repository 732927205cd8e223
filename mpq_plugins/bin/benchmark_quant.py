"""Benchmark of the quantization plugins; writes its figures to a markdown file (and json beside it).

    python -m mpq_plugins.bin.benchmark_quant --out results/benchmark_quant.md \
        [--expdir exp --asr_tag train_asr_conformer --data data/test --n_utts 40]

1. QAT train step (forward, backward, Adam) over the float step, same batch, default Conformer.
2. Encoder time for one 10-second utterance on one thread: float32, our 8-bit system served by
   int8 kernels (mpq_plugins.quant.serve; subsampling static int8, calibrated on other utterances, and
   dynamic as a peer row; the Linear kernels of each quantized engine torch has, fbgemm and onednn, and
   of the engine auto picks on this CPU), ESPnet's dynamic int8 (--quantize_asr_model); for the default Conformer
   and the paper-scale one (egs/librispeech_100). Random weights: time only.
3. Whole decode (beam search with the word LM, as the recipe decodes) of the first n test
   utterances with the trained systems in --expdir, when they are there: real-time factor and WER.
   The 8-bit system is the post-training one (_w8_ptq), else QAT _w8; its int8 subsampling is
   calibrated on --calib_data.
4. Sizes of every packed system in --expdir.
Every timing is a ratio against float32 measured in the same run (median of repeats), the systems
taking turns so that load on the machine falls on all of them alike.
"""
import argparse
import ctypes
import glob
import json
import os
import statistics
import time

import jiwer
import soundfile
import torch

from mpq_plugins.confio import read_config
from mpq_plugins.datadir import read_table
from mpq_plugins.espnet.decoding import Recognizer, read_decode_config
from mpq_plugins.espnet.load import build_from_config, load_asr_model
from mpq_plugins.espnet.wordlm import NgramLM
from mpq_plugins.eval.report import environment
from mpq_plugins.quant.serve import dynamic_int8_linears, linear_engine, to_int8_serving

DEFAULT_CONF = "conf/train_asr_conformer.yaml"
LINEAR_ENGINES = [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
PAPER_CONF = "egs/librispeech_100/conf/train_asr_conformer.yaml"


def steady_allocator():
    """Keep glibc's malloc from returning large blocks to the system between calls (mmap threshold
    32 MB, trim threshold 128 MB). Otherwise a fresh process maps new pages, and takes their page faults,
    for every large tensor: measured here, float32's encoder then took 64 ms instead of 53 and the
    int8 ratio read 1.44x instead of 1.22x, depending on what the process had run before. True when set."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 128 << 20))


def write_report(out, lines, res):
    """The markdown lines to out, the figures to the json beside it; the lines printed."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(res, f, indent=1)
    print("\n".join(lines))


def build(conf_path, n_tokens, quant=None, seed=0):
    torch.manual_seed(seed)
    conf = read_config(conf_path)
    conf.update(token_list=["<blank>", "<unk>"] + [f"t{i}" for i in range(n_tokens - 3)] + ["<sos/eos>"],
                normalize=None, quantization=quant)
    return build_from_config(conf, conf_path)


def interleaved_times(fns, repeats, warmup=2):
    """{name: [seconds of each repeat]} of each function, the systems taking turns (in a rotating order)
    so that a slower or busier moment of the machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns, repeats, warmup=2):
    """{name: median seconds} of each function, taking turns (interleaved_times)."""
    return {n: statistics.median(t) for n, t in interleaved_times(fns, repeats, warmup).items()}


def train_step_ratio(conf_path, repeats):
    torch.manual_seed(1)
    n_utt, n_samples = 12, 48000                      # 36 s of audio: the default recipe's batch
    speech = torch.randn(n_utt, n_samples) * 0.1
    lengths = torch.full((n_utt,), n_samples)
    text = torch.randint(2, 28, (n_utt, 40))
    text_lengths = torch.full((n_utt,), 40)
    steps = {}
    for name, quant in (("float32", None), ("w4 (weight-only QAT)", {"weight_bits": 4}),
                        ("w8 (weight-only QAT)", {"weight_bits": 8}),
                        ("w4a8 (weights and activations)", {"weight_bits": 4, "act_bits": 8})):
        model = build(conf_path, 30, quant)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            opt.zero_grad()
            loss, _, _ = model(speech, lengths, text, text_lengths)
            loss.backward()
            opt.step()
        steps[name] = step
    return interleaved_medians(steps, repeats)


def encoder_times(conf_path, repeats):
    torch.manual_seed(2)
    speech, lengths = torch.randn(1, 160000) * 0.1, torch.tensor([160000])
    systems = {}
    fp32 = build(conf_path, 30).eval()
    systems["float32"] = fp32
    w8 = build(conf_path, 30, {"weight_bits": 8}).eval()
    w8.load_state_dict(fp32.state_dict(), strict=False)
    with torch.no_grad():
        w8.encode(speech, lengths)                     # steps initialised from the float weights
    w8_dyn = build(conf_path, 30, {"weight_bits": 8}).eval()
    w8_dyn.load_state_dict(w8.state_dict())
    to_int8_serving(w8_dyn)
    systems["ours: 8-bit, int8 kernels, dynamic subsampling"] = w8_dyn
    calib = [(torch.randn(1, 160000, generator=torch.Generator().manual_seed(3 + i)) * 0.1, lengths) for i in range(4)]
    for engine in LINEAR_ENGINES:   # each engine's int8 Linear kernels (auto picks one of them: the header says which)
        w8e = build(conf_path, 30, {"weight_bits": 8}).eval()
        w8e.load_state_dict(w8.state_dict())
        to_int8_serving(w8e, calibration=encode_all(w8e, calib), engine=engine)   # other utterances than the timed one
        systems[f"ours: 8-bit, int8 kernels, {engine} Linear"] = w8e
    to_int8_serving(w8, calibration=encode_all(w8, calib))
    systems["ours: 8-bit, int8 kernels"] = w8
    systems["ESPnet dynamic int8 (--quantize_asr_model)"] = dynamic_int8_linears(build(conf_path, 30).eval())
    with torch.no_grad():
        return interleaved_medians({n: (lambda m=m: m.encode(speech, lengths)) for n, m in systems.items()}, repeats)


def encode_all(model, batches):
    """The calibration of to_int8_serving: the model's encoder over (speech, lengths) batches."""
    return lambda: [model.encode(speech, lengths) for speech, lengths in batches]


def read_utts(data, n_utts):
    """[(utt id, samples)] of the first n_utts of a data dir."""
    wavs = read_table(os.path.join(data, "wav.scp"))[:n_utts]
    return [(k, soundfile.read(p.strip(), dtype="float32")[0]) for k, p, _ in wavs]


def decode_rtf(expdir, tag, data, n_utts, decode_conf, word_lm, calib_data, n_calib):
    """(rows, n) for the trained float and w8 systems: RTF and WER of the first n_utts of data; the
    int8-served system's static subsampling is calibrated on the first n_calib utterances of calib_data."""
    fp32_dir = os.path.join(expdir, f"asr_{tag}")
    w8_dir = next((d for d in (f"{fp32_dir}_w8_ptq", f"{fp32_dir}_w8")
                   if os.path.exists(os.path.join(d, "packed.safetensors"))), f"{fp32_dir}_w8_ptq")
    need = [os.path.join(d, "packed.safetensors") for d in (fp32_dir, w8_dir)] + [
        os.path.join(d, "wav.scp") for d in (data, calib_data)]
    if not all(os.path.exists(p) for p in need):
        return None, 0, None
    refs = {k: v for k, v, _ in read_table(os.path.join(data, "text"))}
    audio = read_utts(data, n_utts)
    calib = [(torch.from_numpy(a)[None], torch.tensor([len(a)])) for _, a in read_utts(calib_data, n_calib)]
    seconds = sum(len(a) for _, a in audio) / 16000
    opts = read_decode_config(decode_conf)
    lm = NgramLM.load(word_lm) if word_lm and os.path.exists(word_lm) else None
    systems = {}
    fp32, conf = load_asr_model(None, os.path.join(fp32_dir, "packed.safetensors"))
    systems["float32"] = (fp32, conf)
    w8, conf8 = load_asr_model(None, os.path.join(w8_dir, "packed.safetensors"))
    systems["w8 packed, fake-quant (float kernels)"] = (w8, conf8)
    w8i, _ = load_asr_model(None, os.path.join(w8_dir, "packed.safetensors"))
    to_int8_serving(w8i.eval(), calibration=encode_all(w8i, calib))
    systems["w8 packed, int8 kernels"] = (w8i, conf8)
    fp32d, _ = load_asr_model(None, os.path.join(fp32_dir, "packed.safetensors"))
    systems["float32 + ESPnet dynamic int8"] = (dynamic_int8_linears(fp32d), conf)
    recs = {name: Recognizer(model, c, opts, word_lm=lm) for name, (model, c) in systems.items()}
    names = list(recs)
    spent, hyps = {n: 0.0 for n in names}, {n: [] for n in names}
    for i, (_, a) in enumerate(audio):       # utterance by utterance, the systems taking turns
        for n in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            hyps[n].append(recs[n].decode(a)[0][0])
            spent[n] += time.perf_counter() - t0
    rows = {}
    for n in names:
        wer = jiwer.wer([refs[k] for k, _ in audio], [h if h else "<empty>" for h in hyps[n]])
        rows[n] = {"rtf": spent[n] / seconds, "wer": 100 * wer}
    return rows, len(audio), os.path.basename(w8_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/benchmark_quant.md")
    p.add_argument("--expdir", default="exp")
    p.add_argument("--asr_tag", default="train_asr_conformer")
    p.add_argument("--data", default="data/test")
    p.add_argument("--decode_config", default="conf/decode_espnet.yaml", help="ESPnet's joint search (search: espnet)")
    p.add_argument("--word_lm", default="exp/lm_word_3gram/lm.json")
    p.add_argument("--n_utts", type=int, default=40)
    p.add_argument("--calib_data", default="data/dev", help="utterances that calibrate the int8 subsampling")
    p.add_argument("--n_calib", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    res = {"threads": torch.get_num_threads(), "steady_allocator": steady_allocator()}
    t0 = time.time()
    print("benchmark_quant: QAT train step ...", flush=True)
    res["train_step_s"] = train_step_ratio(DEFAULT_CONF, a.repeats)
    res["encoder_10s_s"] = {}
    for conf in (DEFAULT_CONF, PAPER_CONF):
        print(f"benchmark_quant: encoder, 10 s utterance, {conf} ...", flush=True)
        res["encoder_10s_s"][conf] = encoder_times(conf, a.repeats)
    print("benchmark_quant: whole decode ...", flush=True)
    res["decode"], n, res["decode_w8_system"] = decode_rtf(a.expdir, a.asr_tag, a.data, a.n_utts, a.decode_config, a.word_lm,
                                  a.calib_data, a.n_calib)
    res["sizes"] = {}
    for size in sorted(glob.glob(os.path.join(a.expdir, "asr_*", "packed.size.json"))):
        with open(size) as f:
            res["sizes"][os.path.basename(os.path.dirname(size))] = json.load(f)
    lines = ["# Quantization benchmark", "",
             f"Written by `python -m mpq_plugins.bin.benchmark_quant --out {a.out}` in {time.time() - t0:.0f} s on "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {res['threads']} thread(s). "
             "Times are medians of repeats; ratios are against float32 in the same run. "
             f"int8 serving's Linear kernels: {linear_engine('auto') or torch.backends.quantized.engine} "
             "(to_int8_serving's engine auto on this CPU). "
             + ("glibc's malloc keeps freed memory (mmap threshold 32 MB), so no timing pays page faults for "
                "fresh memory; see steady_allocator()." if res["steady_allocator"] else
                "(glibc's mallopt was not available: timings may include page faults for fresh memory.)"), "",
             "## Environment", ""] + environment() + ["",
             "## QAT train step (default Conformer, batch of 12 x 3 s, forward + backward + Adam)", "",
             "|model|step (s)|over float32|", "|---|---|---|"]
    base = res["train_step_s"]["float32"]
    lines += [f"|{k}|{v:.3f}|{v / base:.2f}x|" for k, v in res["train_step_s"].items()]
    for conf, times in res["encoder_10s_s"].items():
        base = times["float32"]
        lines += ["", f"## Encoder on one 10-second utterance ({conf})", "",
                  "|model|time (s)|speed-up over float32|", "|---|---|---|"]
        lines += [f"|{k}|{v:.3f}|{base / v:.2f}x|" for k, v in times.items()]
    if res["decode"]:
        base = res["decode"]["float32"]["rtf"]
        lines += ["", f"## Whole decode: first {n} utterances of {a.data} ({a.decode_config}, word LM)", "",
                  f"w8 is {a.expdir}/{res['decode_w8_system']}; its int8 subsampling is calibrated on the first "
                  f"{a.n_calib} utterances of {a.calib_data}.", "",
                  "|system|RTF|speed-up over float32|WER on these utterances|", "|---|---|---|---|"]
        lines += [f"|{k}|{v['rtf']:.3f}|{base / v['rtf']:.2f}x|{v['wer']:.1f}|" for k, v in res["decode"].items()]
    else:
        lines += ["", f"(No whole-decode figures: {a.expdir}/asr_{a.asr_tag} and its _w8_ptq (or _w8) system "
                  "are not packed yet.)"]
    if res["sizes"]:
        lines += ["", "## Sizes of the packed systems", "",
                  "|system|float32 bytes|on disk|by the bit accounting|header|ratio|weight bits|",
                  "|---|---|---|---|---|---|---|"]
        for k, r in res["sizes"].items():
            lines.append(f"|{k}|{r['fp32_bytes']:,}|{r['disk_bytes']:,}|{r['accounted_bytes']:,}|"
                         f"{r['header_bytes']:,} ({100 * r['header_bytes'] / r['disk_bytes']:.2f}%)|"
                         f"{r['compression_ratio']:.2f}x|{r['avg_weight_bits']:.2f}|")
    write_report(a.out, lines, res)


if __name__ == "__main__":
    main()
