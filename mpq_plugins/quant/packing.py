"""The packed model file: safetensors (no pickle) with every quantized weight bit-packed at its
own bit-width, and the size report. Any torch model with quantized layers packs; what rebuilds
the model (for ESPnet: its config, mpq_plugins.espnet.load) travels in the header's metadata.

Layout of `<name>.safetensors` (a header of a few kB, then three blobs):
- metadata "format" = FORMAT, "bits" = the bit-width of each quantized weight, in module order,
  "sha256" = the SHA-256 of the three blobs (packed, float32, int64, in that order): a truncated or
  altered file is an error, never a wrong model,
  and the caller's strings (the ESPnet adapter: "config", the model-building part of its config
  as yaml, and "mvn_dim");
- "packed" (uint8): each quantized weight's levels as codes (`codes`: 3..8 bits: q + 2^(b-1), so
  1..2^b - 1; 2 and 1 bits: the four and two levels in order, 0..3 and 0..1) in a little-endian
  bit stream of b bits a value; ternary (1.6) as base-3 digits, five to a byte (sum of d_i 3^i);
  layer after layer, each layer starting on a byte; so 3- and 6-bit weights take 3 and 6 bits,
  ternary 1.6 bits, not a byte;
- "float32": every other floating-point tensor of the state dict (log-steps of the quantizers,
  float parameters, buffers), flattened in state-dict order; "int64": the integer buffers.
Names and shapes are not stored: the rebuilt model's state dict gives them, and every blob must
have exactly the size that model needs.

Unpacked, a weight is q * step: exactly what the fake-quantized model computes, so the packed
file decodes to the same hypotheses.
"""
import hashlib
import math
import os

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from mpq_plugins.quant.layers import quantized_modules
from mpq_plugins.quant.numerics import TERNARY, TRITS, int_unit, parse_bits, storage_bytes

FORMAT = "mpq-asr packed 4"   # 4: 1, 1.6 (ternary) and four-level 2 bits; 3: with the blobs' SHA-256;
#                               2: quantizer steps stored as log-steps
READABLE = (FORMAT, "mpq-asr packed 3", "mpq-asr packed 2")   # older files load unless they hold 2-bit
#                               weights (ternary in those formats; 2 bits now means four levels)
HEADER_BYTES = 8192   # budgets count the header as this (6,144 bytes measured for the default Conformer: its
#                      config and the bit list), so that a file never exceeds its budget


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


def codes(levels, bits):
    """Integer levels (in int_unit(bits) steps, as numerics.to_int gives them) -> codes 0..2^b - 1."""
    v = np.asarray(levels, dtype=np.int16)
    if bits == TERNARY:
        return (v + 1).astype(np.uint8)
    if int_unit(bits) != 1:          # odd integers -(2^b - 1)..(2^b - 1)
        return ((v + 2 ** bits - 1) // 2).astype(np.uint8)
    return (v + 2 ** (bits - 1)).astype(np.uint8)


def levels_of(code, bits):
    """Inverse of codes."""
    v = np.asarray(code, dtype=np.int16)
    if bits == TERNARY:
        return v - 1
    if int_unit(bits) != 1:
        return 2 * v - (2 ** bits - 1)
    return v - 2 ** (bits - 1)


def pack_trits(values):
    """values in 0..2 -> uint8 array of ceil(n / 5) bytes, five base-3 digits a byte."""
    v = np.asarray(values, dtype=np.uint8).reshape(-1)
    pad = (-v.size) % TRITS
    v = np.concatenate([v, np.zeros(pad, np.uint8)]).reshape(-1, TRITS).astype(np.uint16)
    return (v * (3 ** np.arange(TRITS, dtype=np.uint16))).sum(axis=1).astype(np.uint8)


def unpack_trits(data, n):
    need = math.ceil(n / TRITS)
    if data.size != need:
        raise PackedFileError(f"{n} ternary values need {need} bytes, found {data.size}")
    d = np.asarray(data, dtype=np.uint8).astype(np.int16)
    if (d >= 3 ** TRITS).any():
        raise PackedFileError("a ternary byte is above 242: not five base-3 digits")
    digits = (d[:, None] // (3 ** np.arange(TRITS, dtype=np.int16))) % 3
    return digits.reshape(-1)[:n].astype(np.uint8)


def encode(levels, bits):
    """Integer levels of one weight -> its bytes in the packed blob."""
    c = codes(levels, bits)
    return pack_trits(c) if bits == TERNARY else pack_bits(c, int(bits))


def decode(data, bits, n):
    """Bytes of one weight -> its n integer levels (int16)."""
    c = unpack_trits(data, n) if bits == TERNARY else unpack_bits(data, int(bits), n)
    return levels_of(c, bits)


def _layout(model):
    """(quantized modules in order, names of the other state-dict tensors in order)."""
    qmods = quantized_modules(model)
    skip = {f"{n}.weight" for n in qmods}
    return qmods, [k for k in model.state_dict() if k not in skip]


def export_packed(model, path, metadata):
    """Write model (float or quantized) to path (.safetensors), atomically, with the caller's metadata
    strings (what rebuilds the model). Returns the size report."""
    qmods, rest = _layout(model)
    state = model.state_dict()
    packed, bits = [], []
    for name, mod in qmods.items():
        q, _ = mod.weight_quantizer.int_weight(mod.weight)
        b = mod.weight_quantizer.bits
        packed.append(encode(q.cpu().numpy(), b))
        bits.append(b)
    floats = [state[k].detach().cpu().reshape(-1).float().numpy() for k in rest if state[k].is_floating_point()]
    ints = [state[k].detach().cpu().reshape(-1).long().numpy() for k in rest if not state[k].is_floating_point()]
    tensors = {"packed": np.concatenate(packed) if packed else np.zeros(0, np.uint8),
               "float32": np.concatenate(floats) if floats else np.zeros(0, np.float32),
               "int64": np.concatenate(ints) if ints else np.zeros(0, np.int64)}
    meta = {**metadata, "format": FORMAT, "bits": ",".join(map(str, bits)), "sha256": checksum(tensors)}
    tmp = str(path) + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return size_report(model, path, sum(t.nbytes for t in tensors.values()))


def size_report(model, path, payload):
    """Bytes of the float32 model, of the file on disk and by the bit accounting; ratio; bits/param."""
    fp32 = sum(4 * t.numel() for k, t in model.state_dict().items() if "quantizer" not in k)
    n_params = stored_params(model)
    disk = os.path.getsize(path)
    qm = quantized_modules(model)
    nq = sum(m.weight.numel() for m in qm.values())
    return {"fp32_bytes": fp32, "disk_bytes": disk, "accounted_bytes": payload,
            "header_bytes": disk - payload, "compression_ratio": fp32 / disk,
            "avg_bits_per_param": 8.0 * disk / n_params,
            "avg_weight_bits": (sum(m.weight.numel() * float(m.weight_quantizer.bits) for m in qm.values()) / nq) if nq else 32.0,
            "quantized_fraction": nq / n_params, "params": n_params,
            "bits_per_layer": {n: m.weight_quantizer.bits for n, m in qm.items()}}


def checksum(tensors):
    """SHA-256 (hex) of the packed, float32 and int64 blobs, in that order."""
    h = hashlib.sha256()
    for k in ("packed", "float32", "int64"):
        h.update(memoryview(tensors[k]).cast("B"))
    return h.hexdigest()


def fixed_bytes(model, searched=None):
    """Bytes of the packed file that do not depend on the bit-widths a search chooses: float tensors,
    integer buffers, one set of steps per quantized layer, the header (HEADER_BYTES), and the packed
    weights of quantized layers not in `searched` (at their own bits; None: every quantized layer is
    searched). Quantizer tensors of a mixed-precision search (its candidates' steps, logits) are not
    counted: the packed model has one set of steps a layer."""
    qmods = quantized_modules(model)
    searched = set(qmods) if searched is None else set(searched)
    skip = {f"{n}.weight" for n in qmods}
    total = HEADER_BYTES
    for k, t in model.state_dict().items():
        if k in skip or ".weight_quantizer." in k:
            continue
        total += t.numel() * (4 if t.is_floating_point() else 8)
    for n, m in qmods.items():
        total += 4 * (m.weight.shape[0] if getattr(m.weight_quantizer, "per_channel", True) else 1)
        if n not in searched:
            total += storage_bytes(m.weight.numel(), m.weight_quantizer.bits)
    return total


def stored_params(model):
    """Values of the model the packed file stores (every state-dict value but the quantizers'): the
    parameters that avg_bits budgets and size reports count."""
    return sum(t.numel() for k, t in model.state_dict().items() if "quantizer" not in k)


def read_packed(path):
    """(tensors dict of numpy arrays, metadata dict of strings, bits list); one clear error for a bad file."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PackedFileError(f"{path}: not a readable packed model ({e})") from None
    if meta.get("format") not in READABLE:
        raise PackedFileError(f"{path}: not an mpq-asr packed model this version reads (format {meta.get('format')!r}; "
                              f"it reads {', '.join(READABLE)})")
    try:
        bits = [parse_bits(b) for b in meta["bits"].split(",")] if meta["bits"] else []
    except (KeyError, ValueError) as e:
        raise PackedFileError(f"{path}: damaged header ({e})") from None
    if meta["format"] != FORMAT and 2 in bits:
        raise PackedFileError(f"{path}: {meta['format']} stored 2-bit weights as ternary, which this version "
                              "reads as 1.6 bits and 2 bits as four levels: quantize and pack the system again")
    missing = {"packed", "float32", "int64"} - set(tensors)
    if missing:
        raise PackedFileError(f"{path}: missing {', '.join(sorted(missing))}")
    if meta["format"] != "mpq-asr packed 2" and meta.get("sha256") != checksum(tensors):   # 3 and 4 carry one
        raise PackedFileError(f"{path}: damaged: its tensors do not match the checksum in its header")
    return tensors, meta, bits


def unpack_state(model, tensors, bits, path):
    """The state dict of model (built with the packed file's quantization) from the packed tensors:
    every quantized weight as levels * step, with the step the forward pass uses."""
    qmods, rest = _layout(model)
    own = model.state_dict()
    if len(bits) != len(qmods):
        raise PackedFileError(f"{path}: header lists {len(bits)} quantized weights, the model has {len(qmods)}")
    state, pos = {}, 0
    blob = tensors["packed"]
    for (name, mod), b in zip(qmods.items(), bits):
        if mod.weight_quantizer.bits != b:
            raise PackedFileError(f"{path}: {name}: header says {b} bits, the model has {mod.weight_quantizer.bits}")
        n = mod.weight.numel()
        nbytes = storage_bytes(n, b)
        if pos + nbytes > blob.size:
            raise PackedFileError(f"{path}: packed weights end before {name}")
        levels = decode(blob[pos:pos + nbytes], b, n)
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
    for name, mod in qmods.items():   # levels * unit, with the step the forward pass uses
        mod.weight_quantizer.log_step.data.copy_(state[f"{name}.weight_quantizer.log_step"])
        unit = mod.weight_quantizer.effective_step().detach() * int_unit(mod.weight_quantizer.bits)
        state[f"{name}.weight"] = state[f"{name}.weight"] * unit
    return state
