"""ESPnet's ASR model learning from a float teacher, and learning the bit-width of its layers (one-stage
MPQ and the supernet search).

`MixedPrecisionESPnetModel` is ESPnet's `ESPnetASRModel`, registered with ESPnet's model choices as
`model: mpq_espnet` (mpq_plugins.espnet.task): the training config of a run with a teacher or with
mixed precision names it, ESPnet builds it like its own, and its layers are then swapped for
quantization-aware ones (with mixed-precision quantizers: mpq_plugins.quant.mixed). In training it
adds to ESPnet's loss
- the KL from the float teacher's posteriors (CTC and the teacher-forced decoder) to its own, times
  the fine-tuning option `teacher_kl_weight` (every method, the float control too: conf/finetune.yaml),
- with mixed precision, the penalty on the expected size above the budget (with `search_loss: teacher_kl`
  the search's loss is the KL and this penalty alone, ESPnet's loss left out until the bits are fixed);
and after each optimizer update (`after_update`, which the task hooks to the optimizer) it counts the
update, raises the size weight while above the budget (size_weight_lr), and after `search_steps`
updates fixes every layer's bit-width within the budget; each training forward takes the Gumbel-softmax
temperature of the updates so far. Schedules count
optimizer updates, so `accum_grad` does not stretch them. The counters are buffers of the model,
kept in checkpoints for resumption.

The teacher is not part of the model: `Teacher` holds it as a plain object, so it is never trained,
saved in checkpoints, averaged or wrapped by DDP.
"""
import logging

import torch
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask

from mpq_plugins.quant import QuantConfigError
from mpq_plugins.quant.allocation import BudgetError, average_bits, layer_costs
from mpq_plugins.quant.mixed import (budget_avg_bits, expected_avg_bits, fix_allocation, is_searching,
                                     mixed_quantizers, numels, penalty, tau_at)
from mpq_plugins.quant.packing import fixed_bytes, stored_params
from mpq_plugins.quant.sensitivity import kl_div


class Teacher:
    """The float model whose posteriors the KL term follows, built by `load()` on first use."""

    def __init__(self, load):
        self._load, self.model = load, None

    def __call__(self, device):
        if self.model is None:
            self.model = self._load().to(device).eval().requires_grad_(False)
        return self.model


class MixedPrecisionESPnetModel(ESPnetASRModel):
    mpq_cfg = None

    def setup_mixed_precision(self, cfg, teacher=None, kl_weight=0.0):
        """After quantize_: the teacher (a Teacher, or None) and its KL weight; with mixed precision (cfg),
        the budget (checked here, before any training), the update counter and the size weight."""
        if kl_weight > 0 and teacher is None:
            raise QuantConfigError("teacher_kl_weight > 0 needs the float model to learn from (--teacher_model); "
                                   "or set teacher_kl_weight: 0")
        if cfg is not None and cfg.search_loss == "teacher_kl" and not kl_weight > 0:
            raise QuantConfigError("mixed_precision: search_loss teacher_kl needs the teacher's KL "
                                   "(teacher_kl_weight > 0 and --teacher_model)")
        self.mpq_cfg, self.teacher, self.kl_weight = cfg, teacher, kl_weight
        if cfg is not None:
            self.budget_fixed_bytes = fixed_bytes(self, mixed_quantizers(self))   # what no searched bit-width changes
            self.budget_params = stored_params(self)      # what avg_bits and ratio budgets count
            nums = numels(self, mixed_quantizers(self))
            try:
                layer_costs(nums, cfg.candidates, cfg.budget_obj, self.budget_fixed_bytes, self.budget_params)
            except BudgetError as e:
                raise QuantConfigError(f"mixed_precision: {e}") from None
            self.budget_bits = budget_avg_bits(cfg.budget_obj, nums, self.budget_fixed_bytes, self.budget_params)
            self.register_buffer("mpq_updates", torch.zeros(()))   # optimizer updates so far (float: averaged safely)
            if cfg.size_weight_lr:
                self.register_buffer("mpq_size_weight", torch.full((), float(cfg.size_weight)))
        # ESPnet's forward computes the encoder's input and output and the decoder's logits inside; hooks on
        # the model's own encoder and decoder keep them for the KL term instead of re-implementing that forward
        self._seen = {}
        self._last_expected = None
        self.encoder.register_forward_pre_hook(lambda m, a: self._seen.__setitem__("feats", a[:2]))
        self.encoder.register_forward_hook(lambda m, a, o: self._seen.__setitem__("enc", o[:2]))
        if getattr(self, "decoder", None) is not None:
            self.decoder.register_forward_hook(lambda m, a, o: self._seen.__setitem__("dec", (o[0], a[2])))

    @property
    def size_weight(self):
        return self._buffers.get("mpq_size_weight")

    @torch.no_grad()
    def after_update(self):
        """The schedules, after each optimizer update."""
        cfg = self.mpq_cfg
        self.mpq_updates += 1
        n = int(self.mpq_updates)
        if is_searching(self):
            if self.size_weight is not None and self._last_expected is not None:
                self.size_weight.add_(cfg.size_weight_lr * (self._last_expected - self.budget_bits).clamp(min=0))
            if n >= cfg.search_steps:
                bits = fix_allocation(self, cfg.budget_obj, self.budget_fixed_bytes, self.budget_params)
                logging.info(f"mixed precision: bit-widths fixed after {n} updates: "
                             f"{average_bits(bits, numels(self, bits)):.3f} average bits; {bits}")

    def _kl_to_teacher(self, text_lengths, batch_size):
        """Sum over output positions of KL(teacher || model), CTC and decoder, per utterance."""
        feats, feat_lens = self._seen["feats"]
        enc, enc_lens = self._seen["enc"]
        t = self.teacher(enc.device)
        with torch.no_grad():
            t_enc, t_lens = t.encoder(feats, feat_lens)[:2]
            t_ctc = t.ctc.log_softmax(t_enc)
        mask = ~make_pad_mask(enc_lens, maxlen=enc.size(1)).to(enc.device)
        kl = kl_div(t_ctc, self.ctc.log_softmax(enc), mask, reduction="sum")
        if "dec" in self._seen:
            dec_logits, ys_in = self._seen["dec"]
            with torch.no_grad():
                t_dec = t.decoder(t_enc, t_lens, ys_in, text_lengths + 1)[0].log_softmax(-1)
            dmask = ~make_pad_mask(text_lengths + 1, maxlen=ys_in.size(1)).to(enc.device)
            kl = kl + kl_div(t_dec, dec_logits.log_softmax(-1), dmask, reduction="sum")
        return kl / batch_size

    def forward(self, speech, speech_lengths, text, text_lengths, **kwargs):
        if not self.training:
            return super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        cfg = self.mpq_cfg
        if cfg is not None:
            tau = tau_at(int(self.mpq_updates), cfg)     # from the counter: right after a resumption too
            for q in mixed_quantizers(self).values():
                q.tau = tau
        self._seen.clear()
        loss, stats, weight = super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        extra = torch.zeros((), device=loss.device)
        searching = False
        if cfg is not None:
            expected = expected_avg_bits(self)
            self._last_expected = expected.detach()
            searching = is_searching(self)
            sw = cfg.size_weight if self.size_weight is None else self.size_weight.clone()
            if searching:
                extra = penalty(expected, self.budget_bits, sw)
            stats["mpq_bits"] = expected.detach()
            if self.size_weight is not None:
                stats["mpq_size_weight"] = self.size_weight.detach().clone()
            stats["mpq_tau"] = torch.tensor(tau)
        if self.kl_weight > 0 and (cfg is None or searching or cfg.kl_after_fix):
            kl = self._kl_to_teacher(text_lengths, text.size(0))
            extra = extra + self.kl_weight * kl
            stats["mpq_kl"] = kl.detach()
        if searching and cfg.search_loss == "teacher_kl":
            loss = extra.to(loss.device)      # the search learns from the teacher alone (ESPnet's loss: stats only)
        else:
            loss = loss + extra.to(loss.device)
        stats["loss"] = loss.detach()
        return force_gatherable((loss, stats, weight), loss.device)   # as ESPnet's: every stat 1-d for DDP averaging
