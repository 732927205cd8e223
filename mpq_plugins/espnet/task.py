"""ESPnet's ASR task with a `quantization:` section: build, train and finalize quantized models.

`QuantASRTask` is ESPnet's ASRTask plus two options:
- `--quantization`: the yaml section of mpq_plugins.quant.config. The float ESPnet model is built,
  then the chosen modules are swapped for quantization-aware ones that keep ESPnet's parameter
  names, so `--init_param` of a float checkpoint, the trainer, checkpoint averaging and DDP work
  unchanged.
- `--teacher_model`, `--teacher_kl_weight`: the float checkpoint whose posteriors the run learns from
  (KL, any method: conf/finetune.yaml sets the weight for every system alike).

A `quantization:` with a `mixed_precision:` part, or a teacher, trains `model: mpq_espnet`
(MixedPrecisionESPnetModel, registered here with ESPnet's model choices). Its optimizer calls the
model's schedules after every update (torch's optimizer step hooks), and when the run ends the task
finalizes it (`main_worker`): the inference checkpoints (averaged and best models) are rewritten as
plain quantized models at the fixed bit-widths, config.yaml says so (`model: espnet`, every layer's
bits), and `mixed_precision.json` records the allocation and the learnt probabilities. Packing then
only serializes. Train with `python -m mpq_plugins.bin.asr_train` (the options of espnet2.bin.asr_train),
through espnet2.bin.launch for several GPUs, nodes or Slurm.
"""
import copy
import gc
import json
import logging
import os
import re
import sys

import torch
import torch.distributed
import yaml
from espnet2.samplers.build_batch_sampler import build_batch_sampler
from espnet2.tasks import asr as espnet_asr
from espnet2.tasks.asr import ASRTask
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str_or_none

from mpq_plugins.espnet.checkpoint import load_checkpoint, load_state_strict
from mpq_plugins.espnet.groups import groups_for
from mpq_plugins.espnet.model import MixedPrecisionESPnetModel, Teacher
from mpq_plugins.espnet.nested import AllInOneESPnetModel, check_all_in_one, heads_kept_encoder
from mpq_plugins.espnet.ssl import HFSSLEncoder, for_checkpoint
from mpq_plugins.quant import QuantConfig, QuantConfigError, quantize_, with_fixed_bits
from mpq_plugins.quant.allocation import average_bits
from mpq_plugins.quant.mixed import finalize, mixed_quantizers, numels, sgd_logits
from mpq_plugins.quant.nested import AllInOneError, attach_nested

MIXED_MODEL = "mpq_espnet"
AIO_MODEL = "mpq_all_in_one"
espnet_asr.model_choices.classes.setdefault(MIXED_MODEL, MixedPrecisionESPnetModel)   # ESPnet's registry
espnet_asr.model_choices.classes.setdefault(AIO_MODEL, AllInOneESPnetModel)
espnet_asr.encoder_choices.classes.setdefault("hf_ssl", HFSSLEncoder)   # wav2vec2 / HuBERT from a local dir
for _name in ("conformer", "e_branchformer", "transformer"):   # an all-in-one system with fewer attention heads
    espnet_asr.encoder_choices.classes.setdefault(f"{_name}_heads",
                                                  heads_kept_encoder(espnet_asr.encoder_choices.classes[_name]))


class QuantASRTask(ASRTask):
    @classmethod
    def add_task_arguments(cls, parser):
        super().add_task_arguments(parser)
        group = parser.add_argument_group(description="mpq-asr quantization")
        group.add_argument("--quantization", action=NestedDictAction, default=None,
                           help="quantization section: weight_bits, per_channel, act_bits, act_mode, modules, bits, "
                                "mixed_precision (see mpq_plugins/quant/config.py)")
        group.add_argument("--teacher_model", type=str_or_none, default=None,
                           help="float checkpoint whose posteriors the run learns from (KL)")
        group.add_argument("--all_in_one", action=NestedDictAction, default=None,
                           help="nested systems trained in one run: depth, ff, bits, systems, sampled, kl_from, "
                                "kl_weight (see mpq_plugins/quant/nested.py); needs model mpq_all_in_one")
        group.add_argument("--teacher_kl_weight", type=float, default=0.0,
                           help="weight of the KL from the teacher's posteriors (CTC and decoder) to the model's")

    @classmethod
    def build_model(cls, args):
        q = getattr(args, "quantization", None)
        where = f"{getattr(args, 'config', None) or 'config'}: quantization"
        config = QuantConfig.from_dict(q, where) if q else None
        mixed = config is not None and config.mpq is not None
        kl_weight = float(getattr(args, "teacher_kl_weight", 0.0) or 0.0)
        aio = getattr(args, "all_in_one", None)
        if aio is not None or getattr(args, "model", "espnet") == AIO_MODEL:
            return cls.build_all_in_one(args, config, aio, kl_weight, where)
        if (mixed or kl_weight > 0) != (getattr(args, "model", "espnet") == MIXED_MODEL):
            raise QuantConfigError(f"{where}: a mixed_precision part or a teacher (teacher_kl_weight > 0) trains "
                                   f"`model: {MIXED_MODEL}`, and that model needs one (quant confs are turned into "
                                   "training configs by mpq_plugins.bin.quant_config, which sets both)")
        model = super().build_model(args)
        if config is not None:
            quantize_(model, config, groups_for(model), where=where)
        if isinstance(model, MixedPrecisionESPnetModel):
            teacher = getattr(args, "teacher_model", None)
            model.setup_mixed_precision(config.mpq if mixed else None,
                                        Teacher(lambda: cls.build_teacher(args)) if teacher else None, kl_weight)
        return model

    @classmethod
    def build_all_in_one(cls, args, config, section, kl_weight, where):
        """model mpq_all_in_one: the float model, quantized, with a quantizer per bit-width of the systems."""
        where = f"{getattr(args, 'config', None) or 'config'}: all_in_one"
        if section is None or getattr(args, "model", "espnet") != AIO_MODEL or config is None or config.mpq:
            raise QuantConfigError(f"{where}: an all_in_one section trains `model: {AIO_MODEL}` with a quantization "
                                   "section without mixed_precision, and that model needs all three")
        model = super().build_model(args)
        try:
            cfg = check_all_in_one(model, section, where)
        except (AllInOneError, ValueError) as e:
            raise QuantConfigError(str(e)) from None
        names = list(quantize_(model, config, groups_for(model), where=where))
        attach_nested(model, names, sorted({s.bits for s in cfg.system_list}, reverse=True), config.per_channel)
        teacher = getattr(args, "teacher_model", None)
        model.setup_all_in_one(cfg, Teacher(lambda: cls.build_teacher(args)) if teacher else None, kl_weight,
                               int(getattr(args, "seed", 0) or 0))
        return model

    @classmethod
    def build_teacher(cls, args):
        """The float model of --teacher_model: built from the config.yaml beside it (its own architecture,
        e.g. the full model for a narrower system), or else from this run's config without quantization."""
        beside = os.path.join(os.path.dirname(os.path.abspath(args.teacher_model)), "config.yaml")
        float_args = copy.copy(args)
        if os.path.exists(beside):
            with open(beside, encoding="utf-8") as f:
                vars(float_args).update(yaml.safe_load(f))
        float_args.quantization, float_args.model, float_args.all_in_one = None, "espnet", None
        float_args.teacher_kl_weight = 0.0
        float_args.encoder_conf = for_checkpoint(getattr(float_args, "encoder", None), float_args.encoder_conf)
        teacher = super().build_model(float_args)
        load_state_strict(teacher, load_checkpoint(args.teacher_model), args.teacher_model)
        return teacher

    @classmethod
    def build_optimizers(cls, args, model):
        """ESPnet's optimizers, with the quantizers' log-steps moved to a group without weight decay
        (decay would pull every log-step towards 0, i.e. every step towards 1), the precision logits of
        mixed precision to a group of their own learning rate, and the mixed-precision schedules run
        after every update of the first optimizer."""
        optimizers = super().build_optimizers(args, model)
        cfg = getattr(model, "mpq_cfg", None)
        q = getattr(args, "quantization", None) or {}
        sgd = cfg is not None and cfg.logit_optim == "sgd"
        out = [regroup_quantizer_params(o, model, cfg.logit_lr if cfg is not None else None, q.get("step_lr"),
                                        logits_out=sgd) for o in optimizers]
        if cfg is not None:
            if sgd:
                out[0].register_step_post_hook(lambda optimizer, a, kw: sgd_logits(model, cfg.logit_lr))
            out[0].register_step_post_hook(lambda optimizer, a, kw: model.after_update())
        return out

    @classmethod
    def main_worker(cls, args):
        super().main_worker(args)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        finished = False
        try:
            if (not distributed or torch.distributed.get_rank() == 0) and not args.collect_stats \
                    and not args.dry_run and getattr(args, "model", None) == MIXED_MODEL:   # mixed or a teacher
                finalize_run(cls, args)
            finished = True
        finally:
            if distributed:   # every rank waits for rank 0's finalizing (even a failed one), then all leave the
                gc.collect()                         # group together: a rank that exited while another was busy
                torch.distributed.barrier()          # aborted in gloo's teardown; DDP's reducer (freed by the
                torch.distributed.destroy_process_group()   # collection) holds the group's worker threads
        if distributed and finished:
            # the run is complete and its files are written: leave without the interpreter's teardown, in which
            # gloo's threads were seen to abort a finished rank now and then ("terminate called without an
            # active exception", 1 run in 5 of the two-process test)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def planned_updates(conf, shape_files, fold_lengths=()):
    """The optimizer updates a training run of this config (dict) makes over the training data of these
    shape files: max_epoch x batches an epoch (num_iters_per_epoch, or ESPnet's batch sampler's count)
    / accum_grad."""
    c = {**vars(QuantASRTask.get_parser().parse_args([])), **conf}
    iters = c.get("num_iters_per_epoch")
    if not iters:
        iters = len(build_batch_sampler(
            type=c["batch_type"], batch_size=c["batch_size"], batch_bins=c["batch_bins"], shape_files=shape_files,
            sort_in_batch=c["sort_in_batch"], sort_batch=c["sort_batch"], drop_last=c["drop_last_iter"],
            min_batch_size=c["min_batch_size"], fold_lengths=fold_lengths))
    return int(c["max_epoch"]) * (int(iters) // max(int(c.get("accum_grad") or 1), 1))


def regroup_quantizer_params(optimizer, model, logit_lr=None, step_lr=None, logits_out=False):
    """The quantizers' log-steps to a group without weight decay (at step_lr if given), the precision
    logits to one at logit_lr (or out of the optimizer: logits_out, for logit_optim sgd)."""
    steps = {id(p) for n, p in model.named_parameters() if "_quantizer." in n and not n.endswith(".logits")}
    logits = {id(p) for n, p in model.named_parameters() if "_quantizer." in n and n.endswith(".logits")}
    if not (steps or logits) or not hasattr(optimizer, "param_groups"):
        return optimizer
    moved_steps, moved_logits = [], []
    for group in optimizer.param_groups:
        moved_steps += [p for p in group["params"] if id(p) in steps]
        moved_logits += [p for p in group["params"] if id(p) in logits]
        group["params"] = [p for p in group["params"] if id(p) not in steps and id(p) not in logits]
    optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
    if moved_steps:
        group = {"params": moved_steps, "weight_decay": 0.0}
        optimizer.add_param_group(group if step_lr is None else {**group, "lr": step_lr})
    if moved_logits and not logits_out:
        group = {"params": moved_logits, "weight_decay": 0.0}
        optimizer.add_param_group(group if logit_lr is None else {**group, "lr": logit_lr})
    return optimizer


_TRAINING_STATE = re.compile(r"(checkpoint|latest|\d+epoch)\.pth")   # kept as trained: resumption reads them


def inference_checkpoints(output_dir):
    """The averaged and best models of a run (not the epoch checkpoints, latest or checkpoint.pth, which
    resumption needs as they are; a link to another inference model is finalized through it)."""
    out = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if not name.endswith(".pth") or _TRAINING_STATE.fullmatch(name):
            continue
        if os.path.islink(path) and not _TRAINING_STATE.fullmatch(os.path.basename(os.readlink(path))):
            continue
        out.append(path)
    return out


def _plain_config(output_dir, quantization):
    """config.yaml of a finished run rewritten as the plain ESPnet model it now is: no teacher, the
    quantization (with fixed bit-widths) that rebuilds it."""
    config = os.path.join(output_dir, "config.yaml")
    with open(config, encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    conf.update(model="espnet", quantization=quantization, teacher_model=None, teacher_kl_weight=0.0)
    with open(config + ".tmp", "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    os.replace(config + ".tmp", config)


def finalize_run(task, args):
    """A finished run of `model: mpq_espnet` as plain (quantized) models; mixed precision at the fixed
    bit-widths (see the module doc)."""
    output_dir = args.output_dir
    if not (getattr(args, "quantization", None) or {}).get("mixed_precision"):
        _plain_config(output_dir, getattr(args, "quantization", None))   # a teacher only: nothing else to fix
        return
    plain_args = copy.copy(args)
    plain_args.model = "espnet"
    plain_args.teacher_kl_weight = 0.0
    bits, record = None, {}
    for path in inference_checkpoints(output_dir):
        state = load_checkpoint(path)
        if not any(k.endswith(".weight_quantizer.logits") for k in state):
            continue   # finalized already (a rerun that trained nothing)
        model = task.build_model(args)
        load_state_strict(model, state, path)
        if any(q.bits is None for q in mixed_quantizers(model).values()):
            raise QuantConfigError(
                f"{path}: the run ended after {int(model.mpq_updates)} optimizer updates, before "
                f"mixed_precision search_steps {model.mpq_cfg.search_steps}: the bit-widths were never fixed "
                "(lower search_steps or train longer)")
        if not record:
            record = {"probabilities": {k: dict(zip(q.candidates, q.probs().tolist()))
                                        for k, q in mixed_quantizers(model).items()},
                      "updates": int(model.mpq_updates), "budget": model.mpq_cfg.budget,
                      "search_steps": model.mpq_cfg.search_steps, "from": os.path.basename(path)}
        fixed = finalize(model)
        if bits is not None and fixed != bits:    # bits never change after the fix: one config fits every file
            raise QuantConfigError(f"{path}: its bit-widths differ from those of {record['from']} (averaged across "
                                   "the fix? keep_nbest_models of epochs after it only)")
        bits = fixed
        plain_args.quantization = with_fixed_bits(args.quantization, bits)
        plain = task.build_model(plain_args)
        load_state_strict(plain, {k: v for k, v in model.state_dict().items() if not k.startswith("mpq_")}, path)
        torch.save(plain.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)   # a link to an epoch checkpoint becomes a file of its own
        logging.info(f"mixed precision: {path} finalized at the fixed bit-widths")
    done = os.path.join(output_dir, "mixed_precision.json")
    if bits is None:   # a rerun that found every inference model finalized: the allocation of the last run
        if not os.path.exists(done):
            return
        with open(done) as f:
            record = json.load(f)
        bits = record["bits"]
        plain_args.quantization = with_fixed_bits(args.quantization, bits)
    _plain_config(output_dir, plain_args.quantization)
    if "avg_bits" not in record:
        record.update(bits=bits, avg_bits=average_bits(bits, numels(plain, bits)))
        with open(done + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(done + ".tmp", done)
