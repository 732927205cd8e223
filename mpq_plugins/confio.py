"""Reading yaml configs and composing quant confs, without importing ESPnet or torch.

A quant conf (conf/quant/*.yaml) says what stage 6 makes of the float model:

    method: qat            # float | ptq | qat | one_stage | supernet | kl | hessian | all_in_one (METHODS)
    base: w4.yaml          # optional: the conf this one changes (a path relative to this file)
    twins_from: aio.yaml   # all_in_one only, optional: compare with the twins that conf trained (same seed)
    quantization: {...}    # the quantization section (mpq_plugins.quant.config)
    max_epoch: 1           # any ESPnet training option, for the fine-tuning

`compose` reads a conf with its chain of bases: the base's keys, then the conf's on top, mappings
merged key by key (a variant is a few lines); `method` must be stated by the conf itself, the first
thing a reader (and run.sh) looks at. So must `twins_from`: an all-in-one conf that changes only how
the nested model trains (e.g. its losses' balance) has the same twins as the conf it names, and reuses them
instead of training them again (run.sh checks that their training configs are the ones it would write).
"""
import os

import yaml

METHODS = {
    "float": "no quantization: the float model fine-tuned like the others (the control)",
    "ptq": "post-training quantization: the float weights at their MSE-optimal steps, no fine-tuning",
    "qat": "quantization-aware fine-tuning at the bit-widths of the quantization section",
    "one_stage": "one-stage mixed precision: bit-widths learnt and weights fine-tuned in one run",
    "supernet": "two-stage: a Gumbel-softmax supernet chooses the bit-widths, then QAT from the float model",
    "kl": "two-stage: KL sensitivities of the float model choose the bit-widths, then QAT",
    "hessian": "two-stage: Hessian-trace sensitivities of the float model choose the bit-widths, then QAT",
    "all_in_one": "one pass: nested systems of several encoder depths, widths and bit-widths share weights and "
                  "train together; each is exported, and trained alone as its twin",
}
MIXED = ("one_stage", "supernet", "kl", "hessian")   # the methods with a mixed_precision part
RECIPE_KEYS = ("method", "base", "twins_from")       # keys of a quant conf that are not training options


class ConfError(ValueError):
    pass


def read_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ConfError(f"cannot read config {path}: {e}") from None
    if conf is None:
        return {}
    if not isinstance(conf, dict):
        raise ConfError(f"{path}: not a config (expected a mapping)")
    return conf


def merge(base, top):
    """top laid over base: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(path, _seen=()):
    """The quant conf at path with its bases laid under it (its `base` key removed), checked:
    a known method, stated by the conf itself, and a mixed_precision part exactly for the MIXED methods."""
    conf = read_config(path)
    real = os.path.realpath(path)
    if real in _seen:
        raise ConfError(f"{path}: base confs form a loop ({' -> '.join(_seen + (real,))})")
    base = conf.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfError(f"{path}: base must be a path to another quant conf, got {base!r}")
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            raise ConfError(f"{path}: base {base}: no such file ({base_path})")
        under = compose(base_path, _seen + (real,))
        under.pop("method", None)
        under.pop("twins_from", None)
        conf = merge(under, conf)
    if _seen:
        return conf
    method = conf.get("method")
    if method not in METHODS:
        raise ConfError(f"{path}: method {method!r} is not one of {', '.join(METHODS)} "
                        "(every quant conf states its method)")
    quant = conf.get("quantization") or {}
    if not isinstance(quant, dict):
        raise ConfError(f"{path}: quantization must be a mapping")
    if method == "float" and quant:
        raise ConfError(f"{path}: method float trains without quantization; remove the quantization section")
    if method != "float" and not quant:
        raise ConfError(f"{path}: method {method} needs a quantization section")
    if (method == "all_in_one") != ("all_in_one" in conf):
        raise ConfError(f"{path}: method {method} " + ("needs an all_in_one section" if method == "all_in_one"
                                                       else "takes no all_in_one section"))
    if (method in MIXED) != ("mixed_precision" in quant):
        raise ConfError(f"{path}: method {method} " + ("needs a quantization: mixed_precision part" if method in MIXED
                                                      else "takes fixed bit-widths, not a mixed_precision part"))
    if "twins_from" in conf:
        twins_conf(path, conf)
    return conf


def twins_conf(path, conf):
    """The path of the all-in-one conf whose twins the conf at path (composed: conf) compares with, checked."""
    name = conf["twins_from"]
    if conf["method"] != "all_in_one":
        raise ConfError(f"{path}: twins_from is for method all_in_one, not {conf['method']}")
    if not isinstance(name, str) or not name.endswith(".yaml"):
        raise ConfError(f"{path}: twins_from must name another all-in-one conf (a .yaml path relative to this "
                        f"file), got {name!r}")
    other = os.path.join(os.path.dirname(path), name)
    if not os.path.isfile(other):
        raise ConfError(f"{path}: twins_from {name}: no such file ({other})")
    if os.path.realpath(other) == os.path.realpath(path):
        raise ConfError(f"{path}: twins_from {name} names this conf itself")
    twins = compose(other)
    if twins["method"] != "all_in_one" or "twins_from" in twins:
        raise ConfError(f"{path}: twins_from {name}: " + (f"method {twins['method']}, not all_in_one"
                        if twins["method"] != "all_in_one" else "trains no twins itself (it has twins_from too)"))
    return other


def training_options(conf):
    """The ESPnet training options of a composed quant conf (without method and base)."""
    return {k: v for k, v in conf.items() if k not in RECIPE_KEYS}


def read_token_list(path):
    """The tokens of an ESPnet token list file, one a line, in order."""
    with open(path, encoding="utf-8") as f:
        return [t.strip() for t in f if t.strip()]


def resume_conflict(exp_dir, token_list):
    """Why ESPnet could not resume the run in exp_dir with the token list file token_list, or None: a run
    with a checkpoint whose config.yaml lists other tokens (stage 2 made a new list since) would end in a
    size mismatch deep inside ESPnet."""
    config, ckpt = os.path.join(exp_dir, "config.yaml"), os.path.join(exp_dir, "checkpoint.pth")
    if not (os.path.exists(config) and os.path.exists(ckpt)):
        return None
    with open(config, encoding="utf-8") as f:
        old = (yaml.safe_load(f) or {}).get("token_list")
    new = read_token_list(token_list)
    if not isinstance(old, list) or old == new:
        return None
    return (f"{exp_dir} was trained with another token list ({len(old)} tokens; {token_list} has {len(new)} now): "
            f"its checkpoint cannot be resumed; delete {exp_dir} or train into another one (--asr_tag)")
