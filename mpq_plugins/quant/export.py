"""The packed model file: safetensors (no pickle) with every quantized weight bit-packed at its
own bit-width, and the size report.

Layout of `<name>.safetensors` (a header of a few kB, then three blobs):
- metadata "format" = FORMAT, "config" = the model-building part of the ESPnet config (yaml),
  "bits" = the bit-width of each quantized weight, in module order;
- "packed" (uint8): each quantized weight's levels q + 2^(b-1) (0..2^b - 2) as a little-endian
  bit stream of b bits a value, layer after layer, each layer starting on a byte; so 3- and
  6-bit weights take 3 and 6 bits, not a byte;
- "float32": every other floating-point tensor of the state dict (log-steps of the quantizers,
  float parameters, buffers), flattened in state-dict order; "int64": the integer buffers.
Names and shapes are not stored: the config rebuilds the model, whose state dict gives them, and
every blob must have exactly the size that model needs.

Unpacked, a weight is q * step: exactly what the fake-quantized model computes, so the packed
file decodes to the same hypotheses.
"""
import math
import os

import numpy as np
import torch
import yaml

FORMAT = "mpq-asr packed 2"   # 2: quantizer steps stored as log-steps
# the config keys that build the model and its tokenizer; training options stay out of the file
MODEL_KEYS = ("token_list", "token_type", "bpemodel", "input_size", "frontend", "frontend_conf", "specaug",
              "normalize", "normalize_conf", "model", "model_conf", "preencoder", "preencoder_conf", "encoder",
              "encoder_conf", "postencoder", "postencoder_conf", "decoder", "decoder_conf", "ctc_conf",
              "joint_net_conf", "quantization", "init")


class PackedFileError(ValueError):
    pass


def pack_bits(levels, bits):
    """levels: integer array with values in 0..2^bits - 1 -> uint8 array of ceil(n * bits / 8) bytes."""
    v = np.asarray(levels, dtype=np.uint8).reshape(-1)
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(data, bits, n):
    """Inverse of pack_bits: n values of `bits` bits each."""
    need = math.ceil(n * bits / 8)
    if data.size != need:
        raise PackedFileError(f"{n} values of {bits} bits need {need} bytes, found {data.size}")
    planes = np.unpackbits(np.asarray(data, dtype=np.uint8), bitorder="little", count=n * bits).reshape(n, bits)
    return (planes.astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(axis=1).astype(np.uint8)


def model_config(conf):
    return {k: conf[k] for k in MODEL_KEYS if k in conf}


def _layout(model):
    """(quantized modules in order, names of the other state-dict tensors in order)."""
    from mpq_plugins.quant.config import quantized_modules
    qmods = quantized_modules(model)
    skip = {f"{n}.weight" for n in qmods}
    return qmods, [k for k in model.state_dict() if k not in skip]


def export_packed(model, conf, path):
    """Write model (float or quantized) to path (.safetensors), atomically. Returns the size report."""
    from safetensors.numpy import save_file
    qmods, rest = _layout(model)
    state = model.state_dict()
    packed, bits = [], []
    for name, mod in qmods.items():
        q, _ = mod.weight_quantizer.int_weight(mod.weight)
        b = mod.weight_quantizer.bits
        packed.append(pack_bits((q.to(torch.int16) + 2 ** (b - 1)).numpy(), b))
        bits.append(b)
    floats = [state[k].detach().cpu().reshape(-1).float().numpy() for k in rest if state[k].is_floating_point()]
    ints = [state[k].detach().cpu().reshape(-1).long().numpy() for k in rest if not state[k].is_floating_point()]
    tensors = {"packed": np.concatenate(packed) if packed else np.zeros(0, np.uint8),
               "float32": np.concatenate(floats) if floats else np.zeros(0, np.float32),
               "int64": np.concatenate(ints) if ints else np.zeros(0, np.int64)}
    meta = {"format": FORMAT, "config": yaml.safe_dump(model_config(conf), sort_keys=True),
            "bits": ",".join(map(str, bits))}
    if "normalize.mean" in state:   # global MVN: the feature dimension its buffers are rebuilt with
        meta["mvn_dim"] = str(state["normalize.mean"].numel())
    tmp = str(path) + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return size_report(model, path, sum(t.nbytes for t in tensors.values()))


def size_report(model, path, payload):
    """Bytes of the float32 model, of the file on disk and by the bit accounting; ratio; bits/param."""
    from mpq_plugins.quant.config import quantized_modules
    fp32 = sum(4 * t.numel() for k, t in model.state_dict().items() if "quantizer" not in k)
    n_params = sum(t.numel() for k, t in model.state_dict().items() if "quantizer" not in k)
    disk = os.path.getsize(path)
    qm = quantized_modules(model)
    nq = sum(m.weight.numel() for m in qm.values())
    return {"fp32_bytes": fp32, "disk_bytes": disk, "accounted_bytes": payload,
            "header_bytes": disk - payload, "compression_ratio": fp32 / disk,
            "avg_bits_per_param": 8.0 * disk / n_params,
            "avg_weight_bits": (sum(m.weight.numel() * m.weight_quantizer.bits for m in qm.values()) / nq) if nq else 32.0,
            "quantized_fraction": nq / n_params, "params": n_params,
            "bits_per_layer": {n: m.weight_quantizer.bits for n, m in qm.items()}}


def read_packed(path):
    """(tensors dict of numpy arrays, config dict, bits list); one clear error for a bad file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PackedFileError(f"{path}: not a readable packed model ({e})") from None
    if meta.get("format") != FORMAT:
        raise PackedFileError(f"{path}: not an mpq-asr packed model (format {meta.get('format')!r})")
    try:
        conf = yaml.safe_load(meta["config"])
        bits = [int(b) for b in meta["bits"].split(",")] if meta["bits"] else []
    except (KeyError, yaml.YAMLError, ValueError) as e:
        raise PackedFileError(f"{path}: damaged header ({e})") from None
    missing = {"packed", "float32", "int64"} - set(tensors)
    if missing:
        raise PackedFileError(f"{path}: missing {', '.join(sorted(missing))}")
    try:
        mvn_dim = int(meta["mvn_dim"]) if "mvn_dim" in meta else None
    except ValueError:
        raise PackedFileError(f"{path}: damaged header (mvn_dim {meta['mvn_dim']!r})") from None
    return tensors, conf, bits, mvn_dim


def load_packed(path, device="cpu"):
    """Rebuild the ESPnet model (quantization-aware layers included) from a packed file."""
    import tempfile

    from mpq_plugins.espnet_task import build_from_config, load_state_strict
    tensors, conf, bits, mvn_dim = read_packed(path)
    with tempfile.TemporaryDirectory() as tmp:
        conf = dict(conf)
        if conf.get("normalize") == "global_mvn":
            # the model is built from a statistics file; its buffers then come from the packed file
            stats = os.path.join(tmp, "feats_stats.npz")
            dim = mvn_dim or (conf.get("frontend_conf") or {}).get("n_mels", 80)
            np.savez(stats, count=np.array(1.0), sum=np.zeros(dim), sum_square=np.ones(dim))
            conf["normalize_conf"] = {**(conf.get("normalize_conf") or {}), "stats_file": stats}
        model = build_from_config(conf, str(path))
    qmods, rest = _layout(model)
    own = model.state_dict()
    if len(bits) != len(qmods):
        raise PackedFileError(f"{path}: header lists {len(bits)} quantized weights, the config builds {len(qmods)}")
    state, pos = {}, 0
    blob = tensors["packed"]
    for (name, mod), b in zip(qmods.items(), bits):
        if mod.weight_quantizer.bits != b:
            raise PackedFileError(f"{path}: {name}: header says {b} bits, the config builds {mod.weight_quantizer.bits}")
        n = mod.weight.numel()
        nbytes = math.ceil(n * b / 8)
        if pos + nbytes > blob.size:
            raise PackedFileError(f"{path}: packed weights end before {name}")
        levels = unpack_bits(blob[pos:pos + nbytes], b, n).astype(np.int16) - 2 ** (b - 1)
        state[f"{name}.weight"] = torch.from_numpy(levels.astype(np.float32)).reshape(mod.weight.shape)
        pos += nbytes
    if pos != blob.size:
        raise PackedFileError(f"{path}: {blob.size - pos} packed bytes left over: the header does not match its tensors")
    offsets = {"float32": 0, "int64": 0}
    for k in rest:
        kind = "float32" if own[k].is_floating_point() else "int64"
        n = own[k].numel()
        chunk = tensors[kind][offsets[kind]:offsets[kind] + n]
        if chunk.size != n:
            raise PackedFileError(f"{path}: {kind} tensors end before {k}: the header does not match its tensors")
        state[k] = torch.from_numpy(chunk.copy()).reshape(own[k].shape).to(own[k].dtype)
        offsets[kind] += n
    for kind, used in offsets.items():
        if used != tensors[kind].size:
            raise PackedFileError(f"{path}: {tensors[kind].size - used} {kind} values left over: "
                                  "the header does not match its tensors")
    for name, mod in qmods.items():   # levels * step, with the step the forward pass uses
        mod.weight_quantizer.log_step.data.copy_(state[f"{name}.weight_quantizer.log_step"])
        state[f"{name}.weight"] = state[f"{name}.weight"] * mod.weight_quantizer.effective_step().detach()
    try:
        load_state_strict(model, state, str(path))
    except ValueError as e:
        raise PackedFileError(str(e)) from None
    return model.to(device).eval(), conf
