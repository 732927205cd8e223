"""Write the training config of a quantized system: the float model's config, the shared fine-tuning
options and a quant conf on top.

    python -m mpq_plugins.bin.quant_config --base conf/train_asr_conformer.yaml --finetune conf/finetune.yaml \\
        --quant_conf conf/quant/w4.yaml --token_list data/token_list/char/tokens.txt \\
        --out exp/asr_train_asr_conformer_w4/train_config.yaml

The quant conf (mpq_plugins.confio: its `method`, an optional `base`, a `quantization:` section and
ESPnet training options) decides the rest:
- float: no quantization (the control); qat: its quantization section;
- one_stage: the mixed-precision model (`model: mpq_espnet`), which learns the bits in this run (a
  `search_fraction` becomes search_steps from the run's length, given the shape files);
- supernet --search_run: the same model trained for `search_steps` optimizer updates (stage 1);
- kl, hessian, supernet with --bits FILE: QAT with the bit-widths the search wrote there (stage 2);
- all_in_one: the nested model (`model: mpq_all_in_one`); with --aio_system NAME, that system's twin:
  its depth, width and bits as a model of its own, trained alone.
Every method learns from the float checkpoint (--teacher_model) with the fine-tuning option
teacher_kl_weight (conf/finetune.yaml: the same for all; `model: mpq_espnet` then). Each --set KEY=VALUE
applies before that. The result is built into the real model before anything is written, so a
bad option, bit-width or pattern fails before training starts; given the training data's shape files
(--train_shape_file, --fold_length as for ESPnet), a mixed-precision run whose search_steps it would
never reach fails here too.
"""
import argparse
import copy
import os
import sys

import yaml

from mpq_plugins.confio import ConfError, compose, merge, read_config, read_token_list, training_options
from mpq_plugins.espnet.load import build_from_config
from mpq_plugins.espnet.nested import system_config
from mpq_plugins.espnet.task import AIO_MODEL, MIXED_MODEL, QuantASRTask, planned_updates
from mpq_plugins.quant import QuantConfig, QuantConfigError
from mpq_plugins.quant.nested import AllInOneConfig, AllInOneError


def training_config(base, finetune, quant_conf, bits=None, search_run=False, teacher_model=None, sets=(),
                    shape_files=(), fold_lengths=(), aio_system=None):
    """The merged training config (dict) of a quant conf; see the module doc. shape_files (ESPnet's of the
    training data): to turn a search_fraction into search_steps and check the search against the run."""
    conf = compose(quant_conf)
    method = conf["method"]
    known = set(vars(QuantASRTask.get_parser().parse_args([])))
    shared = read_config(finetune)
    for path, options in ((finetune, shared), (quant_conf, training_options(conf))):
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}")
    merged = merge(merge(read_config(base), shared), training_options(conf))
    for kv in sets:
        key, eq, value = kv.partition("=")
        if not eq or key not in known:
            raise ValueError(f"--set {kv}: expected KEY=VALUE with an ESPnet training option as KEY")
        merged[key] = yaml.safe_load(value)
    if method == "ptq":
        raise ValueError(f"{quant_conf}: method ptq does not train (mpq_plugins.bin.ptq)")
    if search_run != (method == "supernet" and bits is None):
        raise ValueError(f"{quant_conf}: --search_run is the first stage of method supernet only")
    if method in ("kl", "hessian", "supernet") and not search_run:
        if bits is None:
            raise ValueError(f"{quant_conf}: method {method} trains the bit-widths its search chose (--bits FILE)")
        merged["quantization"] = read_config(bits).get("quantization")
        QuantConfig.from_dict(merged["quantization"], f"{bits}: quantization")
    mixed = method in ("one_stage", "supernet") and bits is None
    kl_weight = merged.get("teacher_kl_weight") or 0.0
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
        raise ValueError(f"teacher_kl_weight must be a number >= 0, got {kl_weight!r}")
    if mixed or kl_weight > 0:
        merged["model"] = MIXED_MODEL
    if kl_weight > 0:
        if teacher_model is None:
            raise ValueError(f"teacher_kl_weight {kl_weight} needs the float checkpoint to learn from (--teacher_model)")
        if not os.path.isfile(teacher_model):
            raise ValueError(f"--teacher_model {teacher_model}: no such file")
        merged["teacher_model"] = teacher_model
    if mixed:
        mp = QuantConfig.from_dict(merged["quantization"], f"{quant_conf}: quantization").mpq
        if mp.search_fraction is not None or shape_files:
            if not shape_files:
                raise ValueError(f"{quant_conf}: search_fraction needs the run's length: the training data's "
                                 "shape files (--train_shape_file)")
            updates = planned_updates(merged, shape_files, fold_lengths)
            steps = max(1, round(mp.search_fraction * updates)) if mp.search_fraction is not None else mp.search_steps
            if steps > updates:
                raise ValueError(f"{quant_conf}: mixed_precision search_steps {steps} is more than the {updates} "
                                 "optimizer updates this run makes (max_epoch x batches an epoch / accum_grad): the "
                                 "bit-widths would never be fixed; lower search_steps or train longer")
            merged["quantization"] = copy.deepcopy(merged["quantization"])
            merged["quantization"]["mixed_precision"]["search_steps"] = steps
        if search_run:
            steps = QuantConfig.from_dict(merged["quantization"]).mpq.search_steps
            merged.update(max_epoch=1, num_iters_per_epoch=steps * int(merged.get("accum_grad", 1)))
    if aio_system is not None and method != "all_in_one":
        raise ValueError(f"{quant_conf}: --aio_system is for method all_in_one")
    if method == "all_in_one":
        if aio_system is None:
            merged["model"] = AIO_MODEL
        else:   # the twin: the system's architecture and bits, trained alone like any QAT system
            enc = merged.get("encoder_conf") or {}
            cfg = AllInOneConfig.from_dict(merged["all_in_one"], enc.get("num_blocks", 6), enc.get("linear_units", 2048),
                                           f"{quant_conf}: all_in_one")
            merged = system_config(merged, cfg.by_name(aio_system), cfg)
            if kl_weight > 0:
                merged.update(model=MIXED_MODEL, teacher_kl_weight=kl_weight, teacher_model=teacher_model)
    return merged


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the float model's training config")
    p.add_argument("--finetune", required=True, help="the fine-tuning options shared by every system")
    p.add_argument("--quant_conf", required=True, help="the quant conf (conf/quant/*.yaml)")
    p.add_argument("--bits", default=None, help="bits.yaml of a two-stage search (mpq_plugins.bin.search_precision)")
    p.add_argument("--search_run", action="store_true", help="the supernet's search run (method supernet)")
    p.add_argument("--teacher_model", default=None,
                   help="the float checkpoint a mixed-precision run learns from (one_stage, supernet --search_run)")
    p.add_argument("--aio_system", default=None,
                   help="method all_in_one: the config of this nested system's twin (trained alone) instead")
    p.add_argument("--token_list", required=True, help="token list (to build the model for the check)")
    p.add_argument("--train_shape_file", action="append", default=[],
                   help="ESPnet's shape files of the training data (to check search_steps against the run's updates)")
    p.add_argument("--fold_length", action="append", type=int, default=[])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more option on top (the value is read as yaml)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        merged = training_config(a.base, a.finetune, a.quant_conf, a.bits, a.search_run, a.teacher_model, a.set,
                                 a.train_shape_file, a.fold_length, a.aio_system)
        tokens = read_token_list(a.token_list)
        build_from_config({**merged, "token_list": tokens, "normalize": None}, a.quant_conf)
    except (ValueError, OSError, QuantConfigError, ConfError, AllInOneError) as e:
        sys.exit(f"quant_config: {e}")
    text = (f"# {a.base} with {a.finetune}, {a.quant_conf}{' and ' + a.bits if a.bits else ''} on top "
            "(mpq_plugins.bin.quant_config)\n" + yaml.safe_dump(merged, sort_keys=False))
    if os.path.exists(a.out) and open(a.out, encoding="utf-8").read() == text:
        print(f"quant_config: {a.out} is up to date")    # left as it is: run.sh compares the model's time with it
        return
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(a.out + ".tmp", a.out)
    print(f"quant_config: {a.out}")


if __name__ == "__main__":
    main()
