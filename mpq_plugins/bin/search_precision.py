"""Stage 1 of the two-stage mixed-precision methods: choose every layer's bit-width, write them as a
quant conf whose `quantization:` section has them fixed (stage 2 is ordinary QAT with that conf).

    # KL or Hessian-trace sensitivities of the float model on held-out utterances, exact knapsack
    python -m mpq_plugins.bin.search_precision --quant_conf conf/quant/mpq_kl_3bit.yaml \\
        --asr_train_config exp/asr_x/config.yaml --asr_model_file exp/asr_x/valid.acc.ave.pth \\
        --data data/dev --out exp/asr_x_mpq_kl_3bit/bits.yaml
    # differentiable search: the allocation of a trained supernet (its logits, within the budget)
    python -m mpq_plugins.bin.search_precision --quant_conf conf/quant/mpq_supernet_3bit.yaml \\
        --supernet exp/asr_x_mpq_supernet_3bit/search --out exp/asr_x_mpq_supernet_3bit/bits.yaml
    # what run.sh needs to know of a conf: "<method> <search_steps>" (none: not mixed; ptq: max_epoch 0)
    python -m mpq_plugins.bin.search_precision --describe conf/quant/mpq_kl_3bit.yaml

Writes bits.yaml and, beside it, search.json (the sensitivities or probabilities, the allocation,
its average bits and the budget).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import yaml

from mpq_plugins.confio import is_post_training, read_config
from mpq_plugins.quant import QuantConfig, QuantConfigError
from mpq_plugins.quant.config import plan
from mpq_plugins.quant.mpq import fix_allocation, fixed_bytes, mixed_quantizers, numels, with_fixed_bits
from mpq_plugins.quant.search import (BudgetError, allocate, average_bits, hessian_sensitivity,
                                      kl_sensitivity)


def load_asr_model(*args):
    from mpq_plugins.espnet_task import load_asr_model as load
    return load(*args)


def quant_section(path):
    conf = read_config(path)
    q = conf.get("quantization")
    if not q or "mixed_precision" not in q:
        return None, conf
    return QuantConfig.from_dict(q, f"{path}: quantization"), conf


def held_out_batches(conf, data, n_utts, batch_size=8):
    """The first n_utts utterances of a Kaldi data dir as padded (speech, lengths, text, lengths)."""
    import soundfile
    from espnet2.tasks.asr import ASRTask
    args = argparse.Namespace(**conf)
    args.use_preprocessor = True
    prep = ASRTask.build_preprocess_fn(args, train=False)
    wavs, texts = {}, {}
    for name, store in (("wav.scp", wavs), ("text", texts)):
        with open(os.path.join(data, name), encoding="utf-8") as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition(" ")
                store[k] = v
    utts = [u for u in wavs if u in texts][:n_utts]
    if not utts:
        raise ValueError(f"{data}: no utterance with both audio and text")
    items = []
    for u in utts:
        try:
            audio, _ = soundfile.read(wavs[u].strip(), dtype="float32")
        except Exception as e:
            raise ValueError(f"{data}/wav.scp: {u}: {wavs[u]} is not readable audio ({e})") from None
        out = prep(u, {"speech": audio, "text": texts[u]})
        items.append((torch.from_numpy(out["speech"]), torch.from_numpy(np.asarray(out["text"])).long()))
    batches = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        sl = torch.tensor([len(s) for s, _ in chunk])
        tl = torch.tensor([len(t) for _, t in chunk])
        speech = torch.zeros(len(chunk), int(sl.max()))
        text = torch.full((len(chunk), int(tl.max())), -1, dtype=torch.long)
        for j, (s, t) in enumerate(chunk):
            speech[j, :len(s)] = s
            text[j, :len(t)] = t
        batches.append((speech, sl, text, tl))
    return batches


def progress(i, n, name):
    print(f"search_precision: {i}/{n} layers ({name})", file=sys.stderr, flush=True)


def sensitivity_search(qcfg, a):
    model, conf = load_asr_model(a.asr_train_config, a.asr_model_file)
    names = list(plan(model, qcfg))
    mp = qcfg.mpq
    batches = held_out_batches(conf, a.data, mp.n_utts)
    t0 = time.time()
    if mp.method == "kl":
        sens = kl_sensitivity(model, batches, names, mp.candidates, progress=progress)
    else:
        sens = hessian_sensitivity(model, batches, names, mp.candidates, n_samples=mp.hutchinson_samples)
    # the size budget's fixed part: the packed file of this model quantized at any bit-width
    import copy

    from mpq_plugins.quant import quantize_
    probe = copy.deepcopy(model)
    quantize_(probe, {k: v for k, v in vars(qcfg).items() if k not in ("mixed_precision", "mpq")})
    nums = numels(model, names)
    bits = allocate(sens, nums, mp.candidates, mp.budget_obj, fixed_bytes(probe))
    return bits, {"sensitivity": sens, "search_seconds": time.time() - t0, "avg_bits": average_bits(bits, nums),
                  "utterances": sum(len(b[1]) for b in batches)}


def supernet_search(qcfg, a):
    model, _ = load_asr_model(os.path.join(a.supernet, "config.yaml"),
                              os.path.join(a.supernet, a.supernet_model))
    mq = mixed_quantizers(model)
    if not mq:
        raise ValueError(f"{a.supernet}: not a supernet (no mixed-precision quantizers)")
    probs = {k: dict(zip(q.candidates, q.probs().tolist())) for k, q in mq.items()}
    bits = fix_allocation(model, qcfg.mpq.budget_obj, model._mpq_fixed_bytes)
    return bits, {"probabilities": probs, "avg_bits": average_bits(bits, numels(model, bits))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--describe", help="print '<method> <search_steps>' of a quant conf and exit")
    p.add_argument("--quant_conf")
    p.add_argument("--asr_train_config")
    p.add_argument("--asr_model_file")
    p.add_argument("--data", help="held-out Kaldi data dir for the sensitivities")
    p.add_argument("--supernet", help="exp dir of a trained supernet (method supernet)")
    p.add_argument("--supernet_model", default="latest.pth")
    p.add_argument("--out")
    a = p.parse_args(argv)
    try:
        if a.describe:
            qcfg, conf = quant_section(a.describe)
            if is_post_training(conf):
                if qcfg is not None:
                    raise ValueError(f"{a.describe}: max_epoch 0 (post-training quantization) takes fixed "
                                     "bit-widths, not a mixed_precision search")
                print("ptq 0")
                return
            print("none 0" if qcfg is None else f"{qcfg.mpq.method} {qcfg.mpq.search_steps}")
            return
        if not (a.quant_conf and a.out):
            sys.exit("search_precision: --quant_conf and --out are needed")
        qcfg, _ = quant_section(a.quant_conf)
        if qcfg is None:
            raise ValueError(f"{a.quant_conf}: no quantization: mixed_precision section")
        if qcfg.mpq.method in ("kl", "hessian"):
            if not (a.asr_train_config and a.asr_model_file and a.data):
                sys.exit("search_precision: --asr_train_config, --asr_model_file and --data are needed")
            bits, record = sensitivity_search(qcfg, a)
        elif qcfg.mpq.method == "supernet":
            if not a.supernet:
                sys.exit("search_precision: --supernet is needed for method supernet")
            bits, record = supernet_search(qcfg, a)
        else:
            raise ValueError(f"{a.quant_conf}: method {qcfg.mpq.method} learns its bits in training (no search stage)")
    except (ValueError, OSError, QuantConfigError, BudgetError) as e:
        sys.exit(f"search_precision: {e}")
    q = with_fixed_bits(read_config(a.quant_conf)["quantization"], bits)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        f.write(f"# bit-widths chosen by {qcfg.mpq.method} for {a.quant_conf} (mpq_plugins.bin.search_precision)\n")
        yaml.safe_dump({"quantization": q}, f, sort_keys=False)
    os.replace(a.out + ".tmp", a.out)
    record.update(method=qcfg.mpq.method, budget=qcfg.mpq.budget, bits=bits)
    with open(os.path.join(os.path.dirname(os.path.abspath(a.out)), "search.json"), "w") as f:
        json.dump(record, f, indent=1)
    counts = {b: sum(1 for v in bits.values() if v == b) for b in sorted(set(bits.values()))}
    print(f"search_precision: {a.out}: {len(bits)} layers, {record['avg_bits']:.3f} average bits, "
          f"layers per bit-width {counts}")


if __name__ == "__main__":
    main()
