"""ESPnet glue: the ASR task with a `quantization:` section, and loading its models safely.

`QuantASRTask` is ESPnet's ASRTask plus one option, `--quantization` (the yaml section of
mpq_plugins.quant.config). It builds the float ESPnet model, then swaps the chosen modules for
quantization-aware ones that keep ESPnet's parameter names, so `--init_param` of a float
checkpoint, the trainer, checkpoint averaging and DDP work unchanged. Train with
`python -m mpq_plugins.bin.asr_train` (same options as espnet2.bin.asr_train).

`load_asr_model` rebuilds a model from its config.yaml and loads its weights strictly, with
`torch.load(weights_only=True)`: unlike ESPnet's `build_model_from_file` (strict=False), a
quantizer the config does not rebuild, or one the checkpoint lacks, is an error, never a float
model decoding silently in place of a quantized one. Packed files (mpq_plugins.quant.export)
load here too.
"""
import argparse
import logging

import torch
import yaml
from espnet2.tasks.asr import ASRTask
from espnet2.utils.nested_dict_action import NestedDictAction

from mpq_plugins.confio import read_config  # noqa: F401  (re-exported: entry points import it from here)
from mpq_plugins.quant import QuantConfig, QuantConfigError, quantize_


class QuantASRTask(ASRTask):
    @classmethod
    def add_task_arguments(cls, parser):
        super().add_task_arguments(parser)
        group = parser.add_argument_group(description="mpq-asr quantization")
        group.add_argument("--quantization", action=NestedDictAction, default=None,
                           help="quantization section: weight_bits, per_channel, act_bits, act_mode, modules, bits "
                                "(see mpq_plugins/quant/config.py)")

    @classmethod
    def build_model(cls, args):
        model = super().build_model(args)
        q = getattr(args, "quantization", None)
        if q:
            where = f"{getattr(args, 'config', None) or 'config'}: quantization"
            config = QuantConfig.from_dict(q, where)
            quantize_(model, config, where=where)
            if config.mixed_precision is not None:
                init = [p for p in (getattr(args, "init_param", None) or [])]
                base = type(model)
                model.__class__ = type(f"MixedPrecision{base.__name__}", (MixedPrecisionASR, base), {"_mpq_base": base})
                model.mpq_setup(config.mpq, init[0].split(":")[0] if init else None, args)
        return model

    @classmethod
    def build_optimizers(cls, args, model):
        """ESPnet's optimizers, with the quantizers' log-steps moved to a group without weight
        decay (decay would pull every log-step towards 0, i.e. every step towards 1), and the
        precision logits of mixed precision to a group of their own learning rate."""
        optimizers = super().build_optimizers(args, model)
        logit_lr = model.mpq_cfg.logit_lr if isinstance(model, MixedPrecisionASR) else None
        return [regroup_quantizer_params(o, model, logit_lr) for o in optimizers]


def regroup_quantizer_params(optimizer, model, logit_lr=None):
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
        optimizer.add_param_group({"params": moved_steps, "weight_decay": 0.0})
    if moved_logits:
        group = {"params": moved_logits, "weight_decay": 0.0}
        optimizer.add_param_group(group if logit_lr is None else {**group, "lr": logit_lr})
    return optimizer


class MixedPrecisionASR:
    """Mixed into an ESPnet ASR model whose `quantization:` has a mixed_precision part (one_stage or
    supernet): in training, it anneals the Gumbel-softmax temperature, adds the penalty on the
    expected size above the budget and the KL from the float teacher (the --init_param checkpoint)
    to the loss, and after search_steps fixes every layer's bit-width within the budget
    (mpq_plugins.quant.mpq). ESPnet's own forward computes the ASR loss; hooks pick up the encoder's
    input features and the outputs the KL needs."""

    def mpq_setup(self, cfg, teacher_file, args):
        from mpq_plugins.quant import mpq
        self.mpq_cfg = cfg
        self._mpq_fixed_bytes = mpq.fixed_bytes(self)          # before mpq_steps: the packed file has no such buffer
        nums = mpq.numels(self, mpq.mixed_quantizers(self))
        try:   # a size budget below what the smallest candidates allow fails here, before training
            mpq.layer_costs(nums, cfg.candidates, cfg.budget_obj, self._mpq_fixed_bytes)
        except mpq.BudgetError as e:
            raise QuantConfigError(f"mixed_precision: {e}") from None
        self._mpq_budget_bits = mpq.budget_avg_bits(cfg.budget_obj, nums, self._mpq_fixed_bytes)
        self.register_buffer("mpq_steps", torch.zeros(()))   # training forwards so far (kept in checkpoints)
        if cfg.size_weight_lr:   # the penalty's weight, raised while the expected size is above the budget
            self.register_buffer("mpq_size_weight", torch.full((), float(cfg.size_weight)))
        object.__setattr__(self, "_mpq_teacher", None)        # not a submodule: never trained or saved
        object.__setattr__(self, "_mpq_teacher_src", (teacher_file, args))
        self._mpq_seen = {}
        self._mpq_hooks = [
            self.encoder.register_forward_pre_hook(lambda m, a: self._mpq_seen.__setitem__("feats", a[:2])),
            self.encoder.register_forward_hook(lambda m, a, o: self._mpq_seen.__setitem__("enc", o[:2]))]
        if getattr(self, "decoder", None) is not None:
            self._mpq_hooks.append(
                self.decoder.register_forward_hook(lambda m, a, o: self._mpq_seen.__setitem__("dec", (o[0], a[2]))))

    def mpq_teardown(self):
        """Back to the plain ESPnet model (after mpq.finalize): no hooks, no step counter."""
        for h in self._mpq_hooks:
            h.remove()
        del self._buffers["mpq_steps"]
        self._buffers.pop("mpq_size_weight", None)
        self.__class__ = self._mpq_base

    def _teacher(self):
        if self._mpq_teacher is None:
            import copy
            teacher_file, args = self._mpq_teacher_src
            if not teacher_file:
                raise QuantConfigError("mixed_precision: kl_weight > 0 needs the float model to learn from "
                                       "(--init_param); or set kl_weight: 0")
            targs = copy.copy(args)
            targs.quantization = None
            teacher = QuantASRTask.build_model(targs)
            state = torch.load(teacher_file, map_location="cpu", weights_only=True)
            load_state_strict(teacher, state, teacher_file)
            device = next(self.parameters()).device
            object.__setattr__(self, "_mpq_teacher", teacher.to(device).eval().requires_grad_(False))
        return self._mpq_teacher

    def _kl_to_teacher(self, text, text_lengths):
        """sum over output positions of KL(teacher || model), CTC and decoder, per utterance."""
        from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
        feats, feat_lens = self._mpq_seen["feats"]
        enc, enc_lens = self._mpq_seen["enc"]
        t = self._teacher()
        with torch.no_grad():
            t_enc, t_lens = t.encoder(feats, feat_lens)[:2]
            t_ctc = t.ctc.log_softmax(t_enc)
        mask = (~make_pad_mask(enc_lens, maxlen=enc.size(1))).to(enc.device).float()
        s_ctc = self.ctc.log_softmax(enc)
        kl = ((t_ctc.exp() * (t_ctc - s_ctc)).sum(-1) * mask).sum()
        if "dec" in self._mpq_seen:
            dec_logits, ys_in = self._mpq_seen["dec"]
            with torch.no_grad():
                t_dec = t.decoder(t_enc, t_lens, ys_in, text_lengths + 1)[0].log_softmax(-1)
            dmask = (~make_pad_mask(text_lengths + 1, maxlen=ys_in.size(1))).to(enc.device).float()
            s_dec = dec_logits.log_softmax(-1)
            kl = kl + ((t_dec.exp() * (t_dec - s_dec)).sum(-1) * dmask).sum()
        return kl / text.size(0)

    def forward(self, speech, speech_lengths, text, text_lengths, **kwargs):
        from mpq_plugins.quant import mpq
        if not self.training:
            return super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        cfg = self.mpq_cfg
        step = int(self.mpq_steps)
        if mpq.is_searching(self) and step >= cfg.search_steps and cfg.method == "one_stage":
            bits = mpq.fix_allocation(self, cfg.budget_obj, self._mpq_fixed_bytes)
            logging.info(f"mixed precision: bit-widths fixed at step {step}: "
                         f"{mpq.average_bits(bits, mpq.numels(self, bits)):.3f} average bits; {bits}")
        tau = mpq.tau_at(step, cfg)
        for q in mpq.mixed_quantizers(self).values():
            q.tau = tau
        self._mpq_seen.clear()
        loss, stats, weight = super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        self.mpq_steps += 1
        expected = mpq.expected_avg_bits(self)
        searching = mpq.is_searching(self)
        sw = getattr(self, "mpq_size_weight", None)
        extra = (mpq.penalty(expected, self._mpq_budget_bits, cfg.size_weight if sw is None else sw.clone())
                 if searching else torch.zeros(())).to(loss.device)
        stats["mpq_bits"] = expected.detach()
        if sw is not None:
            if searching:
                with torch.no_grad():
                    sw += cfg.size_weight_lr * (expected.detach() - self._mpq_budget_bits).clamp(min=0)
            stats["mpq_size_weight"] = sw.detach().clone()
        if cfg.kl_weight > 0 and (searching or cfg.kl_after_fix):
            kl = self._kl_to_teacher(text, text_lengths)
            extra = extra + cfg.kl_weight * kl
            stats["mpq_kl"] = kl.detach()
        stats["mpq_tau"] = torch.tensor(tau)
        loss = loss + extra
        stats["loss"] = loss.detach()
        return loss, stats, weight


def build_from_config(conf, where):
    """The model of an ESPnet config dict; options it leaves out take the parser's defaults."""
    args = QuantASRTask.get_parser().parse_args([])
    vars(args).update(conf)
    args.config = where
    try:
        return QuantASRTask.build_model(args)
    except QuantConfigError:
        raise
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{where}: cannot build the ESPnet model: {e}") from None


def load_state_strict(model, state, where):
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        msg = []
        if missing:
            msg.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            msg.append(f"{len(unexpected)} tensors the config does not build (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(f"{where} does not fit its config: {'; '.join(msg)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{where} does not fit its config: {k} has shape {tuple(v.shape)}, "
                             f"the model wants {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(model_file, device="cpu"):
    """The state dict of a .pth checkpoint, loaded with weights_only=True; one error for a bad file."""
    try:
        return torch.load(model_file, map_location=device, weights_only=True)
    except Exception as e:   # torch raises several kinds for a truncated or foreign file
        raise ValueError(f"cannot load checkpoint {model_file}: {str(e).splitlines()[0]}") from None


def load_asr_model(config_path, model_file, device="cpu"):
    """(model in eval mode, config dict) from an ESPnet config.yaml and a .pth checkpoint or packed file."""
    if str(model_file).endswith(".safetensors"):
        from mpq_plugins.quant.export import load_packed
        model, conf = load_packed(model_file, device)
        return model, conf
    conf = read_config(config_path)
    model = build_from_config(conf, str(config_path))
    load_state_strict(model, load_checkpoint(model_file, device), str(model_file))
    return model.to(device).eval(), conf


def load_lm(config_path, model_file, device="cpu"):
    """An ESPnet LM (espnet2.bin.lm_train), loaded strictly with weights_only=True."""
    from espnet2.tasks.lm import LMTask
    model = LMTask.build_model(argparse.Namespace(**read_config(config_path)))
    try:
        state = torch.load(model_file, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot load LM checkpoint {model_file}: {str(e).splitlines()[0]}") from None
    load_state_strict(model, state, str(model_file))
    return model.to(device).eval()
