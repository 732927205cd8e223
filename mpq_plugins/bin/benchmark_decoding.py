"""Benchmark of the decoders on trained systems; writes its figures to a markdown file (and json beside it).

    python -m mpq_plugins.bin.benchmark_decoding --exp exp/asr_train_asr_conformer --data data/test \
        --lm_dir exp/lm_word_3gram --out results/benchmark_decoding.md [--n_utts 100]

On one thread, the first --n_utts utterances of --data, decoded by:
1. ESPnet's joint CTC/attention beam search with the word LM (conf/decode_espnet.yaml), utterance by
   utterance, as stage 7 decoded before the fast decoder;
2. the fast decoder with the LM (search: lexicon; --exp's tuned config from stage 7 when there is one,
   else conf/decode_asr.yaml), batched as stage 7 runs it, its time split into encoder, C++ search and
   rescoring;
3. the fast acoustic decode (search: ctc; tuned likewise, else conf/decode_acoustic.yaml);
with the float32 system (--exp) and, when --w8_exp is packed, the 8-bit system served by int8 kernels
(mpq_plugins.quant.serve; subsampling calibrated on --calib_data). Every timing is from this run; the
ratios are against ESPnet's search and against float32 measured in it. The decodes take turns --repeats
times (float32 and int8 alternating, so that a drift of the machine touches both) and each figure is the
median over the repeats. The CPU's model and its SIMD
flags are recorded: int8 speed depends on them.
"""
import argparse
import itertools
import json
import os
import statistics
import time

import jiwer
import torch

from mpq_plugins.datadir import read_table, write_atomic
from mpq_plugins.espnet.decoding import build_recognizer, read_batches, read_decode_config
from mpq_plugins.eval.report import environment
from mpq_plugins.quant.serve import to_int8_serving


def conf_of(exp, decode, default):
    tuned = os.path.join(exp, decode, "tuned_config.yaml")
    return tuned if os.path.exists(tuned) else default


def int8_served(rec, calib):
    """The recognizer's model served by int8 kernels, its static subsampling calibrated on calib batches."""
    model = rec.model
    to_int8_serving(model, calibration=lambda: [model.encode(torch.as_tensor(w)[None], torch.tensor([len(w)]))
                                                for _, wavs in calib for w in wavs])
    return rec


def run_fast(rec, batches):
    """(hyps, seconds by part) of the fast decoder over batches [(keys, waveforms)]."""
    from mpq_plugins.espnet.ctc_search import best_words, combine
    parts, hyps = {"encoder": 0.0, "search": 0.0, "rescoring": 0.0}, {}
    for keys, wavs in batches:
        t0 = time.perf_counter()
        enc, lens, logp = rec.encode(wavs)
        t1 = time.perf_counter()
        cands = rec.first_pass(logp, lens)
        t2 = time.perf_counter()
        best = best_words(cands, combine(rec.components(enc, lens, logp, cands), rec.opts), len(keys))
        t3 = time.perf_counter()
        hyps.update(zip(keys, best))
        parts["encoder"] += t1 - t0
        parts["search"] += t2 - t1
        parts["rescoring"] += t3 - t2
    return hyps, parts


def run_espnet(rec, batches):
    hyps, t0 = {}, time.perf_counter()
    for keys, wavs in batches:
        for k, w in zip(keys, wavs):
            out = rec.decode(w)
            hyps[k] = out[0][0] if out else ""
    return hyps, {"total": time.perf_counter() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="the float32 system's exp dir (packed.safetensors, config.yaml)")
    p.add_argument("--w8_exp", default=None, help="an 8-bit system's exp dir, served by int8 kernels")
    p.add_argument("--data", required=True)
    p.add_argument("--calib_data", default=None, help="utterances that calibrate the int8 subsampling (dev)")
    p.add_argument("--lm_dir", required=True, help="stage 4's LM dir: lm.json, lm.arpa, words.txt")
    p.add_argument("--conf_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "conf"))
    p.add_argument("--n_utts", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="turns of every decode; figures are medians")
    p.add_argument("--out", default="results/benchmark_decoding.md")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats {a.repeats}: at least 1")
    torch.set_num_threads(1)
    t_start = time.time()
    refs = {k: v for k, v, _ in read_table(os.path.join(a.data, "text"))}
    keys = [k for k, _, _ in read_table(os.path.join(a.data, "wav.scp"))][: a.n_utts]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    key_file = os.path.join(os.path.dirname(os.path.abspath(a.out)), ".benchmark_keys")
    write_atomic(key_file, "".join(f"{k}\n" for k in keys))
    lm = {"word_lm_file": os.path.join(a.lm_dir, "lm.json"), "arpa_file": os.path.join(a.lm_dir, "lm.arpa"),
          "lexicon_file": os.path.join(a.lm_dir, "words.txt")}
    decoders = {
        "ESPnet joint beam search + word LM": os.path.join(a.conf_dir, "decode_espnet.yaml"),
        "fast: C++ lexicon search + KenLM, attention rescoring": conf_of(a.exp, "decode_asr_packed",
                                                                          os.path.join(a.conf_dir, "decode_asr.yaml")),
        "fast acoustic: C++ CTC search, attention rescoring": conf_of(a.exp, "decode_acoustic_packed",
                                                                       os.path.join(a.conf_dir, "decode_acoustic.yaml")),
    }
    systems = {"float32": a.exp}
    if a.w8_exp and os.path.exists(os.path.join(a.w8_exp, "packed.safetensors")):
        systems["w8, int8 kernels"] = a.w8_exp
    calib = list(itertools.islice(read_batches(os.path.join(a.calib_data or a.data, "wav.scp") + ",speech,sound"), 10))
    batches_of = {}   # {batch seconds: the test utterances so batched}, read once
    runs = []         # (system, decoder, conf, recognizer, batches, search)
    for sys_name, exp in systems.items():
        for dec_name, conf in decoders.items():
            opts = read_decode_config(conf)
            rec = build_recognizer(os.path.join(exp, "config.yaml"), os.path.join(exp, "packed.safetensors"), opts,
                                   **lm)
            if sys_name != "float32":
                rec = int8_served(rec, calib)
            seconds = opts["batch_seconds"] if opts["search"] != "espnet" else 0.0
            if seconds not in batches_of:
                batches_of[seconds] = list(read_batches(os.path.join(a.data, "wav.scp") + ",speech,sound", key_file,
                                                        seconds))
            runs.append((sys_name, dec_name, conf, rec, batches_of[seconds], opts["search"]))
    audio_s = sum(len(w) for _, ws in next(iter(batches_of.values())) for w in ws) / 16000
    timed = [[] for _ in runs]   # per run, each turn's seconds by part
    hyps_of = {}
    order = sorted(range(len(runs)), key=lambda i: (runs[i][1], runs[i][0] != "float32"))   # float32, int8 by decoder
    for turn in range(a.repeats):
        for i in order:
            sys_name, dec_name, conf, rec, batches, search = runs[i]
            print(f"benchmark_decoding: turn {turn + 1}/{a.repeats}: {sys_name}, {dec_name} ({conf}) ...", flush=True)
            hyps, parts = (run_espnet if search == "espnet" else run_fast)(rec, batches)
            hyps_of.setdefault(i, hyps)
            timed[i].append(parts)
    rows = []
    for i, (sys_name, dec_name, conf, _, _, _) in enumerate(runs):
        parts = {k: statistics.median(p[k] for p in timed[i]) for k in timed[i][0]}
        total = statistics.median(sum(p.values()) for p in timed[i])
        hyps = hyps_of[i]
        out = jiwer.process_words([refs[k] for k in keys], [hyps[k] for k in keys])
        rows.append({"system": sys_name, "decoder": dec_name, "config": conf, "seconds": total,
                     "rtf": total / audio_s, "parts": parts, "repeats": [sum(p.values()) for p in timed[i]],
                     "errors": out.substitutions + out.deletions + out.insertions,
                     "words": sum(len(refs[k].split()) for k in keys)})
    os.remove(key_file)
    res = {"n_utts": len(keys), "audio_seconds": audio_s, "threads": 1, "repeats": a.repeats, "rows": rows}
    base = {r["system"]: r["rtf"] for r in rows if r["decoder"].startswith("ESPnet")}
    fl = {r["decoder"]: r["rtf"] for r in rows if r["system"] == "float32"}
    lines = ["# Decoding benchmark", "",
             f"Written by `python -m mpq_plugins.bin.benchmark_decoding --exp {a.exp}"
             + (f" --w8_exp {a.w8_exp}" if a.w8_exp else "") + f" --data {a.data}"
             + (f" --calib_data {a.calib_data}" if a.calib_data else "") + f" --lm_dir {a.lm_dir} "
             f"--n_utts {a.n_utts} --repeats {a.repeats} --out {a.out}` in {time.time() - t_start:.0f} s: the first "
             f"{len(keys)} utterances of {a.data} ({audio_s:.0f} s of audio), one thread, every decode {a.repeats} "
             "times in turn (float32 and int8 alternating); times are medians over the turns (each turn's total: "
             f"`{os.path.splitext(os.path.basename(a.out))[0]}.json`). Every figure is from this run.", "",
             "## Environment", ""] + environment() + ["",
             "|system|decoder|RTF|speed-up over ESPnet's search|encoder share|encoder / search / rescoring (s)|"
             "WER (errors / words)|int8 over float32 (whole decode)|", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts = r["parts"]
        share = f"{100 * parts['encoder'] / r['seconds']:.0f}%" if "encoder" in parts else ""
        split = " / ".join(f"{parts[k]:.1f}" for k in ("encoder", "search", "rescoring")) if "encoder" in parts else ""
        speed = f"{base[r['system']] / r['rtf']:.1f}x" if r["system"] in base else ""
        int8 = f"{fl[r['decoder']] / r['rtf']:.2f}x faster" if r["system"] != "float32" and r["decoder"] in fl else ""
        lines.append(f"|{r['system']}|{r['decoder']}|{r['rtf']:.4f}|{speed}|{share}|{split}|"
                     f"{100 * r['errors'] / r['words']:.1f} ({r['errors']} / {r['words']})|{int8}|")
    lines += ["", "Configs: " + "; ".join(f"{d}: `{os.path.relpath(c)}`" for d, c in decoders.items()) + "."]
    write_atomic(a.out, "\n".join(lines) + "\n")
    write_atomic(os.path.splitext(a.out)[0] + ".json", json.dumps(res, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
