"""Stage 1 of the two-stage mixed-precision methods on an ESPnet model: choose every layer's
bit-width within the budget.

- kl, hessian: sensitivities of the float model (mpq_plugins.quant.sensitivity) on held-out
  utterances, over its output posteriors: CTC and the teacher-forced attention decoder. The
  Hessian's loss is the attention loss plus the KL of the CTC posteriors to the float model's:
  torch's CTC loss has no second derivative, and at the float point that KL's Hessian is the CTC
  posteriors' Fisher. Then the exact knapsack (mpq_plugins.quant.allocation).
- supernet: the allocation its search run fixed (mpq_plugins.espnet.task finalizes every
  mixed-precision run and records it in mixed_precision.json).
"""
import argparse
import copy
import hashlib
import json
import os
import time

import numpy as np
import soundfile
import torch
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos
from espnet2.tasks.asr import ASRTask

from mpq_plugins.datadir import file_digest, read_table
from mpq_plugins.espnet.groups import groups_for
from mpq_plugins.quant import QuantConfig, quantize_
from mpq_plugins.quant.allocation import allocate, average_bits, layer_costs
from mpq_plugins.quant.config import plan, searched
from mpq_plugins.quant.mixed import numels
from mpq_plugins.quant.numerics import parse_bits
from mpq_plugins.quant.packing import fixed_bytes, stored_params
from mpq_plugins.quant.sensitivity import hessian_sensitivity, kl_div, kl_sensitivity


def posteriors(model, batch):
    """[(CTC log-posteriors, mask), (attention-decoder log-posteriors under teacher forcing, mask)];
    (None, None) for a part the model lacks."""
    speech, speech_lengths, text, text_lengths = batch
    enc, enc_lens = model.encode(speech, speech_lengths)
    ctc = (model.ctc.log_softmax(enc), ~make_pad_mask(enc_lens, maxlen=enc.size(1)).to(enc.device)) \
        if getattr(model, "ctc", None) is not None else (None, None)
    att = (None, None)
    if getattr(model, "decoder", None) is not None:
        ys_in, _ = add_sos_eos(text, model.sos, model.eos, model.ignore_id)
        dec, _ = model.decoder(enc, enc_lens, ys_in, text_lengths + 1)
        att = (dec.log_softmax(-1), ~make_pad_mask(text_lengths + 1, maxlen=ys_in.size(1)).to(enc.device))
    return [ctc, att]


def hessian_loss(model, batch, teacher, ctc_weight):
    """(1 - ctc_weight) * attention NLL + ctc_weight * KL(float CTC posteriors || the model's)."""
    (ctc, mask), (att, att_mask) = posteriors(model, batch)
    loss = 0.0
    if ctc is not None and ctc_weight > 0:
        loss = loss + ctc_weight * kl_div(teacher[0][0], ctc, mask)
    if att is not None and ctc_weight < 1:
        _, ys_out = add_sos_eos(batch[2], model.sos, model.eos, model.ignore_id)
        nll = -att.gather(-1, ys_out.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        loss = loss + (1 - ctc_weight) * (nll * att_mask).sum() / att_mask.sum()
    return loss


def espnet_hessian_sensitivity(model, batches, names, candidates, n_samples=16, seed=0, ctc_weight=None):
    model.eval()
    if ctc_weight is None:
        ctc_weight = float(getattr(model, "ctc_weight", 0.5))
    with torch.no_grad():
        teachers = [posteriors(model, b) for b in batches]
    loss_fns = [lambda b=b, t=t: hessian_loss(model, b, t, ctc_weight) for t, b in zip(teachers, batches)]
    # Hessian-vector products differentiate twice: torch's fused attention kernels (used by transformers'
    # models) have no second derivative, its math kernel has
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        out = hessian_sensitivity(model, loss_fns, names, candidates, n_samples, seed)
    for m in model.modules():   # ESPnet's attention keeps its last weights (for plots), here with their graph
        if isinstance(getattr(m, "attn", None), torch.Tensor):
            m.attn = m.attn.detach()
    return out


def spread_over_speakers(utts, utt2spk, n):
    """n utterances taken in turn from every speaker (first of each speaker, then the second, ...),
    speakers in order of first appearance: held-out data that hears every voice, not one or two."""
    by_spk = {}
    for u in utts:
        by_spk.setdefault(utt2spk.get(u, u), []).append(u)
    out, rank = [], 0
    while len(out) < n and any(rank < len(v) for v in by_spk.values()):
        out += [v[rank] for v in by_spk.values() if rank < len(v)][: n - len(out)]
        rank += 1
    return out


def held_out_batches(conf, data, n_utts, batch_size=8):
    """n_utts utterances of a Kaldi data dir, spread over its speakers (utt2spk), as padded
    (speech, lengths, text, lengths)."""
    args = argparse.Namespace(**conf)
    args.use_preprocessor = True
    prep = ASRTask.build_preprocess_fn(args, train=False)
    wavs = {k: v for k, v, _ in read_table(os.path.join(data, "wav.scp"))}
    texts = {k: v for k, v, _ in read_table(os.path.join(data, "text"))}
    spk_file = os.path.join(data, "utt2spk")
    utt2spk = {k: v.strip() for k, v, _ in read_table(spk_file)} if os.path.exists(spk_file) else {}
    utts = spread_over_speakers([u for u in wavs if u in texts], utt2spk, n_utts)
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


def cache_path(cache_dir, method, model_file, data, mp, per_channel):
    """Where the sensitivities of this search live in cache_dir: they depend on the float model, the
    candidates, the held-out data and the search's own options, not on the budget (nor on a fine-tuning
    seed), so every budget of a method reads the ones its first search computed. Nor on the other layers
    searched: a layer's sensitivity is measured with that layer alone quantized (KL), or is the trace of
    its own Hessian block (Hessian, an unbiased estimate whatever else is probed; a layer whose
    estimate is not positive takes the smallest positive one among the layers measured), so the file keeps
    its layers and a search of any of them reads it."""
    key = {"method": method, "model": file_digest(model_file), "candidates": [str(b) for b in mp.candidates],
           "per_channel": per_channel, "n_utts": mp.n_utts,
           "hutchinson_samples": mp.hutchinson_samples if method == "hessian" else None,
           "data": [file_digest(os.path.join(data, f)) for f in ("wav.scp", "text", "utt2spk")
                    if os.path.exists(os.path.join(data, f))]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{method}_{digest}.json")


def sensitivity_search(method, model, conf, qcfg, data, progress=None, model_file=None, cache_dir=None):
    """({layer: bits}, record) of the kl or hessian search on the float model (loaded from its config).
    The budget is checked first: one that no allocation meets fails before the search's minutes.
    With cache_dir (and the model's checkpoint file), sensitivities a search of the same model,
    candidates and data computed before for these layers (or more) are read, not computed: the record
    names the file and keeps the seconds (wall and CPU) of the search that computed them, which the
    system's compression time counts (mpq_plugins.espnet.system): a search of fewer layers (some pinned
    by bits: entries) is charged the whole earlier search, never less than its own would have cost."""
    groups = groups_for(model)
    names = searched(qcfg, plan(model, qcfg, groups))    # the layers a bits: entry pins keep their bits
    mp = qcfg.mpq
    nums = numels(model, names)
    probe = copy.deepcopy(model)    # the size budget's fixed part: this model packed at any bit-width
    quantize_(probe, QuantConfig.from_dict({k: v for k, v in vars(qcfg).items()
                                            if k not in ("mixed_precision", "mpq", "budget_obj")}),
              groups)
    fixed, n_params = fixed_bytes(probe, names), stored_params(probe)
    layer_costs(nums, mp.candidates, mp.budget_obj, fixed, n_params)
    cached = cache_path(cache_dir, method, model_file, data, mp, qcfg.per_channel) \
        if cache_dir and model_file else None
    done = None
    if cached and os.path.exists(cached):
        with open(cached) as f:
            done = json.load(f)
    if done is not None and set(names) <= set(done["sensitivity"]):
        sens = {n: {parse_bits(b): v for b, v in done["sensitivity"][n].items()} for n in names}
        info = {k: done[k] for k in ("search_seconds", "search_cpu_seconds", "utterances")}
        info["sensitivity_cache"] = {"file": cached, "computed_here": False}
    else:
        batches = held_out_batches(conf, data, mp.n_utts)
        t0, c0 = time.time(), time.process_time()
        if method == "kl":
            sens = kl_sensitivity(model, batches, names, mp.candidates, posteriors, progress=progress)
        else:
            sens = espnet_hessian_sensitivity(model, batches, names, mp.candidates, n_samples=mp.hutchinson_samples)
        info = {"search_seconds": round(time.time() - t0, 2), "search_cpu_seconds": round(time.process_time() - c0, 2),
                "utterances": sum(len(b[1]) for b in batches)}
        if cached and (done is None or set(names) >= set(done["sensitivity"])):   # keep the larger set of layers
            os.makedirs(cache_dir, exist_ok=True)
            with open(cached + ".tmp", "w") as f:
                json.dump({**info, "sensitivity": {n: {str(b): v for b, v in per.items()} for n, per in sens.items()}}, f)
            os.replace(cached + ".tmp", cached)
            info["sensitivity_cache"] = {"file": cached, "computed_here": True}
    bits = allocate(sens, nums, mp.candidates, mp.budget_obj, fixed, n_params)
    return bits, {"sensitivity": sens, "avg_bits": average_bits(bits, nums), **info}


def supernet_allocation(search_dir):
    """({layer: bits}, record) that a finished supernet run fixed (its mixed_precision.json)."""
    path = os.path.join(search_dir, "mixed_precision.json")
    if not os.path.exists(path):
        raise ValueError(f"{path}: missing: the supernet run in {search_dir} has not finished")
    with open(path) as f:
        record = json.load(f)
    return record["bits"], {"probabilities": record["probabilities"], "avg_bits": record["avg_bits"]}
