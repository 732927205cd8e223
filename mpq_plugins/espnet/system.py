"""The record of one compressed system (the schema: mpq_plugins/record.py), made at the end of stage 6
from what that stage left: the quant conf, the packed file's size report, the compression-time log and
the training summary."""
import os

from mpq_plugins import record
from mpq_plugins.record import read_json
from mpq_plugins.confio import compose, read_config
MIXED_NAMES = {"one_stage": "one-stage MPQ", "kl": "two-stage MPQ (KL)", "hessian": "two-stage MPQ (Hessian)",
               "supernet": "two-stage MPQ (supernet search)"}


def describe(method, quant):
    """The method as the report names it, from the conf's method and quantization section."""
    if method == "float":
        return "float32"
    if method == "float_control":
        return "float32, fine-tuned (control)"
    if method in MIXED_NAMES:
        return MIXED_NAMES[method]
    if method == "all_in_one":
        return "all-in-one nested system"
    if method == "all_in_one_twin":
        return "all-in-one twin (trained alone)"
    kind = "weights and activations" if quant.get("act_bits") else "weights"
    return f"{'mixed' if quant.get('bits') else 'uniform'} {'PTQ' if method == 'ptq' else 'QAT'}, {kind}"



def compression_time(exp_dir):
    """{search_s, train_s, pack_s, total_s, cpu_s, train_cpu_s} from compression_time.json (mpq_plugins.bin.timed),
    or None.
    Sensitivities that a two-stage search read from the cache (search.json) are charged the seconds of the
    search that computed them: every system pays for its whole search, whichever ran first."""
    log = read_json(os.path.join(exp_dir, "compression_time.json"), [])
    if not log:
        return None
    parts = {w: sum(e["wall_s"] for e in log if e["what"] == w) for w in ("search", "train", "pack")}
    total, cpu = sum(e["wall_s"] for e in log), sum(e["cpu_s"] for e in log)
    search = read_json(os.path.join(exp_dir, "search.json"), {})
    if search.get("sensitivity_cache", {}).get("computed_here") is False:
        parts["search"] += search["search_seconds"]
        total += search["search_seconds"]
        cpu += search.get("search_cpu_seconds", search["search_seconds"])
    train_cpu = sum(e["cpu_s"] for e in log if e["what"] == "train")
    return {**{f"{w}_s": round(v, 2) for w, v in parts.items()}, "total_s": round(total, 2), "cpu_s": round(cpu, 2),
            "train_cpu_s": round(train_cpu, 2)}


def system_record(exp_dir, quant_conf, source_checkpoint, twin=False, twin_system=None):
    """The record of the system in exp_dir, made by quant_conf (None: exp_dir is the float baseline;
    twin: the individually trained twin of an all-in-one conf's nested system; twin_system: a nested system's
    twin, its exp dir, recorded before it)."""
    size = read_json(os.path.join(exp_dir, "packed.size.json"))
    if size is None:
        raise ValueError(f"{exp_dir}/packed.size.json: missing (the system is not packed yet)")
    config = read_config(os.path.join(exp_dir, "config.yaml"))
    quant = config.get("quantization") or {}
    conf = compose(quant_conf) if quant_conf else {}
    method = conf.get("method", "float")
    if method == "float" and quant_conf:
        method = "float_control"
    if twin:
        if method != "all_in_one":
            raise ValueError(f"{quant_conf}: --twin is for the systems of an all_in_one conf, not method {method}")
        method = "all_in_one_twin"
    if (method == "all_in_one") != (twin_system is not None):
        raise ValueError(f"{exp_dir}: " + ("a nested system of an all_in_one conf needs its twin (--twin_system)"
                                           if method == "all_in_one" else f"method {method} has no twin system"))
    if twin_system is not None and not os.path.exists(os.path.join(twin_system, record.FILE)):
        raise ValueError(f"{exp_dir}: its twin {twin_system} has no record ({record.FILE}): record the twin first")
    mixed = (conf.get("quantization") or {}).get("mixed_precision") or {}
    summary = read_json(os.path.join(exp_dir, "training_summary.json"))
    is_float = method in ("float", "float_control")
    return {
        "format": record.FORMAT, "system": os.path.basename(os.path.normpath(exp_dir)), "method": method,
        "description": describe(method, quant), "quant_conf": quant_conf, "conf": conf,
        "budget": mixed.get("budget"), "is_float": is_float,
        "weight_bits": 32.0 if is_float else float(size["avg_weight_bits"]), "act_bits": quant.get("act_bits"),
        "bits_per_layer": size.get("bits_per_layer") or {},
        "sizes": {k: size[k] for k in ("fp32_bytes", "disk_bytes", "accounted_bytes", "header_bytes",
                                        "compression_ratio", "params", "quantized_fraction")},
        "compression_time": compression_time(exp_dir) if quant_conf else None,
        "source_checkpoint": source_checkpoint, "seed": config.get("seed"),
        "training": ({k: summary[k] for k in ("epochs", "train_seconds", "best_valid_acc", "best_epoch")}
                     if summary else None),
        **({"twin": os.path.basename(os.path.normpath(twin_system))} if twin_system is not None else {}),
    }


def write_system(exp_dir, quant_conf, source_checkpoint, twin=False, twin_system=None):
    """Write exp_dir/system.yaml; returns the record."""
    rec = system_record(exp_dir, quant_conf, source_checkpoint, twin, twin_system)
    record.write_system(exp_dir, rec)
    return rec
