"""The record of one system: exp/<system>/system.yaml, written at the end of the quantize stage
(mpq_plugins.espnet.system makes it), read by the report (mpq_plugins.eval.report, which reads nothing
else about what a system is). Torch-free, below both.

Format 1, a YAML mapping; every key below must be there (null only where noted), other keys are
ignored:

    format: 1
    system: asr_x_w4             # the exp dir's name
    method: qat                  # one of METHODS
    description: uniform QAT, weights    # the human-readable method (the report's "method" column)
    quant_conf: conf/quant/w4.yaml       # null for the baseline
    conf: {...}                  # the composed quant conf, {} for the baseline
    budget: {avg_bits: 3.0}      # stored bits a parameter, whole file; or {ratio: R} or {size_mb: M}; null unless mixed precision
    is_float: false              # true for float and float_control
    weight_bits: 4.0             # average bits per quantized weight (32.0 for float)
    bits_per_layer: {layer: 4, ...}      # {} for float
    sizes: {fp32_bytes, disk_bytes, accounted_bytes, header_bytes, compression_ratio, params, quantized_fraction}
    compression_time: {search_s, train_s, pack_s, total_s, cpu_s[, train_cpu_s]}   # null for the baseline / no log
    source_checkpoint: exp/asr_x/valid.acc.ave.pth
    seed: 0                      # null when the config has none
    training: {epochs, train_seconds, best_valid_acc, best_epoch}   # null when unknown
    twin: asr_x_aio_d4_ff1_w4_twin       # method all_in_one only: the exp dir name of the system's twin
"""
import json
import os

import yaml

FORMAT = 1
FILE = "system.yaml"
METHODS = ("float", "float_control", "ptq", "qat", "one_stage", "supernet", "kl", "hessian", "all_in_one",
           "all_in_one_twin")   # all_in_one: a nested system of a one-pass run; _twin: the same trained alone
FLOAT = ("float", "float_control")
MIXED = ("one_stage", "supernet", "kl", "hessian")    # mixed precision: the bits are chosen under a budget
REQUIRED = ("format", "system", "method", "description", "quant_conf", "conf", "budget", "is_float", "weight_bits",
            "bits_per_layer", "sizes", "compression_time", "source_checkpoint", "seed", "training")
NULLABLE = ("quant_conf", "budget", "compression_time", "training", "seed")   # seed: the report does not use it
SIZES = ("fp32_bytes", "disk_bytes", "accounted_bytes", "header_bytes", "compression_ratio", "params",
         "quantized_fraction")
COMPRESSION_TIME = ("search_s", "train_s", "pack_s", "total_s", "cpu_s")
TRAINING = ("epochs", "train_seconds", "best_valid_acc", "best_epoch")


class RecordError(ValueError):
    pass


def read_json(path, default=None):
    """A json file stage 6 left beside a system (sizes, times, summaries), or default when it is not there."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _problems(rec, name):
    """What is wrong with a parsed record of the exp dir `name` (an empty list: nothing)."""
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return [f"missing keys {', '.join(missing)}"]
    out = [f"{k} is null" for k in REQUIRED if rec[k] is None and k not in NULLABLE]
    if out:
        return out
    if rec["format"] != FORMAT:
        out.append(f"format {rec['format']!r}, this reader knows format {FORMAT}")
    if rec["system"] != name:
        out.append(f"system {rec['system']!r} is not the dir's name {name!r} (copied from another system?)")
    if rec["method"] not in METHODS:
        out.append(f"method {rec['method']!r} is not one of {', '.join(METHODS)}")
    elif rec["is_float"] is not (rec["method"] in FLOAT):
        out.append(f"is_float {rec['is_float']!r} does not fit method {rec['method']}")
    if rec["method"] in MIXED and not (isinstance(rec["budget"], dict) and
                                       len(set(rec["budget"]) & {"avg_bits", "ratio", "size_mb"}) == 1):
        out.append(f"method {rec['method']} needs a budget {{avg_bits: B}}, {{ratio: R}} or {{size_mb: M}}, "
                   f"not {rec['budget']!r}")
    if rec["method"] == "all_in_one" and not (isinstance(rec.get("twin"), str) and rec["twin"]):
        out.append(f"method all_in_one needs twin: the exp dir name of its twin, not {rec.get('twin')!r} (records "
                   "made before 2026-12-06 have none: run stage 6 again, which records them anew)")
    if not _number(rec["weight_bits"]):
        out.append(f"weight_bits {rec['weight_bits']!r} is not a number")
    for key, sub in (("sizes", SIZES), ("compression_time", COMPRESSION_TIME), ("training", TRAINING)):
        value = rec[key]
        if value is None:
            continue
        if not isinstance(value, dict):
            out.append(f"{key} is not a mapping")
        elif [k for k in sub if k not in value]:
            out.append(f"{key} lacks {', '.join(k for k in sub if k not in value)}")
    for key in ("conf", "bits_per_layer"):
        if not isinstance(rec[key], dict):
            out.append(f"{key} is not a mapping")
    return out


def read_system(exp_dir):
    """The record of the system in exp_dir (its system.yaml) as a dict, checked against the
    schema above; anything missing or malformed is one RecordError naming the file."""
    path = os.path.join(exp_dir, FILE)
    if not os.path.exists(path):
        raise RecordError(f"{path}: missing (stage 6 of run.sh writes it for every system; for an experiment "
                          "made before records existed, write it from what the dir holds with python -m "
                          "mpq_plugins.bin.record_system --exp_dir DIR [--quant_conf CONF] --source_checkpoint FLOAT_PTH)")
    try:
        with open(path, encoding="utf-8") as f:
            rec = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        raise RecordError(f"{path}{f':{where.line + 1}' if where else ''}: not valid YAML "
                           f"({getattr(e, 'problem', None) or e})") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: not a system record (a YAML mapping), but {type(rec).__name__}")
    problems = _problems(rec, os.path.basename(os.path.normpath(exp_dir)))
    if problems:
        raise RecordError(f"{path}: not a valid system record: {'; '.join(problems)}")
    return rec


def write_system(exp_dir, rec):
    """Check rec against the schema above and write it as exp_dir/system.yaml, atomically."""
    problems = _problems(rec, os.path.basename(os.path.normpath(exp_dir)))
    if problems:
        raise RecordError(f"{exp_dir}/{FILE}: not a valid system record: {'; '.join(problems)}")
    path = os.path.join(exp_dir, FILE)
    tmp = f"{path}.{os.getpid()}.tmp"   # two recipes recording the same float model never share one
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"# {rec['system']}: {rec['description']} (written by mpq_plugins.bin.record_system)\n")
        yaml.safe_dump(rec, f, sort_keys=False)
    os.replace(tmp, path)
