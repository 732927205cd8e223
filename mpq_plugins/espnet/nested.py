"""ESPnet's ASR model training nested systems of different encoder depth, feed-forward width and weight
precision in one run (one-pass all-in-one compression: mpq_plugins.quant.nested).

`AllInOneESPnetModel` is registered with ESPnet's model choices as `model: mpq_all_in_one` (task.py).
At its first training forward (after ESPnet's --init_param loaded the float weights) it orders every
encoder feed-forward's units by importance; then each forward trains the largest system, the smallest
and `sampled` others drawn for that step (the same draw on every rank and after a resumption), all on
the same batch with the same random state (SpecAugment, dropout), summing their losses: the largest
learns from the float teacher (the fine-tuning option teacher_kl_weight), the others from the largest's
posteriors (`kl_from: largest`) or from the teacher. Validation and decoding use the largest system.

`export_system` turns one nested system into the plain quantized ESPnet model it is: its config (the
encoder's num_blocks and linear_units, the bit-width) and its state (only its blocks, units and steps),
which computes exactly what the nested model computes in that system. `export_float` slices the float
model the same way: the starting point of the system's individually trained twin.
"""
import copy

import torch
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.torch_utils.device_funcs import force_gatherable

from mpq_plugins.espnet.model import MixedPrecisionESPnetModel
from mpq_plugins.quant.nested import (AllInOneConfig, UnitMask, nested_quantizers, order_units, seeded_plan,
                                      set_bits)
from mpq_plugins.quant.numerics import bits_label
from mpq_plugins.quant.sensitivity import kl_div

# the encoder feed-forwards a system narrows: (module, its first Linear, its second Linear) in a block
FF_PAIRS = (("feed_forward", "w_1", "w_2"), ("feed_forward_macaron", "w_1", "w_2"),   # ESPnet's encoders
            ("feed_forward", "intermediate_dense", "output_dense"))                  # wav2vec2 / HuBERT (hf_ssl)


class DepthMixin:
    """A block stack (ESPnet's MultiSequential, transformers' ModuleList) that runs and iterates over only its
    first `depth` blocks; every block stays registered, so the state dict, the optimizer and DDP see them all."""

    depth = None

    def _active(self):
        mods = list(self._modules.values())
        return mods if self.depth is None else mods[: self.depth]

    def __iter__(self):
        return iter(self._active())

    def __len__(self):
        return len(self._active())


_DEPTH_CLASSES = {}


def limit_depth(stack):
    """Turn a block stack into its depth-limited class, in place."""
    cls = type(stack)
    if not issubclass(cls, DepthMixin):
        if cls not in _DEPTH_CLASSES:
            _DEPTH_CLASSES[cls] = type(f"Depth{cls.__name__}", (DepthMixin, cls), {})
        stack.__class__ = _DEPTH_CLASSES[cls]
    return stack


def block_stack(model):
    """(name prefix of the encoder's blocks, their stack): ESPnet's encoders, or a foundation model's layers."""
    if hasattr(model.encoder, "encoders"):
        return "encoder.encoders.", model.encoder.encoders
    inner = getattr(getattr(model.encoder, "model", None), "encoder", None)
    if inner is not None and hasattr(inner, "layers"):
        return "encoder.model.encoder.layers.", inner.layers
    raise ValueError(f"{type(model.encoder).__name__}: no block stack to take the first blocks of")


def encoder_blocks(model):
    return list(block_stack(model)[1]._modules.values())


def feed_forwards(model):
    """{name: (first Linear, second Linear)} of the encoder's feed-forward modules."""
    prefix, stack = block_stack(model)
    out = {}
    for i, block in enumerate(stack._modules.values()):
        for ff, first, second in FF_PAIRS:
            mod = getattr(block, ff, None)
            if mod is not None and hasattr(mod, first) and hasattr(mod, second):
                out[f"{prefix}{i}.{ff}"] = (getattr(mod, first), getattr(mod, second))
    return out


def layout(model):
    """(block prefix, names of the feed-forwards' first Linears, of their second ones): what slicing a state needs."""
    names = {id(m): n for n, m in model.named_modules()}
    ffs = feed_forwards(model).values()
    return block_stack(model)[0], {names[id(a)] for a, _ in ffs}, {names[id(b)] for _, b in ffs}


def encoder_size(model):
    """(blocks, feed-forward units) of the model's encoder."""
    ffs = feed_forwards(model)
    if not ffs:
        raise ValueError(f"{type(model.encoder).__name__}: no feed-forward modules to narrow")
    return len(encoder_blocks(model)), next(iter(ffs.values()))[0].weight.shape[0]


def check_all_in_one(model, section, where="all_in_one"):
    blocks, units = encoder_size(model)
    return AllInOneConfig.from_dict(section, blocks, units, where)


class AllInOneESPnetModel(MixedPrecisionESPnetModel):
    aio = None

    def setup_all_in_one(self, cfg, teacher=None, kl_weight=0.0, seed=0):
        """After quantize_ and attach_nested: the systems (cfg: AllInOneConfig), the teacher of the largest."""
        self.setup_mixed_precision(None, teacher, kl_weight)
        self.aio, self.aio_seed = cfg, seed
        self.register_buffer("aio_forwards", torch.zeros(()))   # training forwards so far: the plan's step
        self.register_buffer("aio_ordered", torch.zeros(()))    # 1 once the feed-forward units are ordered
        limit_depth(block_stack(self)[1])
        self._unit_masks = []
        for w_1, _ in feed_forwards(self).values():
            mask = UnitMask(w_1.weight.shape[0])
            w_1.register_forward_hook(mask)
            self._unit_masks.append(mask)
        self.set_system(cfg.largest)

    def set_system(self, system):
        block_stack(self)[1].depth = system.depth
        for mask in self._unit_masks:
            mask.width = self.aio.units(system)
        set_bits(self, system.bits)

    @torch.no_grad()
    def prepare(self):
        """Order the feed-forward units and start every bit-width's step from the ordered weights, once."""
        if float(self.aio_ordered) == 1:
            return
        for w_1, w_2 in feed_forwards(self).values():
            order_units(w_1, w_2)
        for name, q in nested_quantizers(self).items():
            w = self.get_submodule(name).weight
            for quantizer in q.quantizers.values():
                quantizer.init_from(w)
        self.aio_ordered.fill_(1)

    def _posteriors(self, text_lengths):
        """(CTC log-posteriors, mask, decoder log-posteriors or None, mask) of the last forward."""
        enc, enc_lens = self._seen["enc"]
        ctc = self.ctc.log_softmax(enc)
        mask = ~make_pad_mask(enc_lens, maxlen=enc.size(1)).to(enc.device)
        if "dec" not in self._seen:
            return ctc, mask, None, None
        dec_logits, ys_in = self._seen["dec"]
        dmask = ~make_pad_mask(text_lengths + 1, maxlen=ys_in.size(1)).to(enc.device)
        return ctc, mask, dec_logits.log_softmax(-1), dmask

    def _kl_to(self, ref, text_lengths, batch_size):
        ctc, mask, dec, dmask = self._posteriors(text_lengths)
        kl = kl_div(ref[0], ctc, mask, reduction="sum")
        if dec is not None and ref[2] is not None:
            kl = kl + kl_div(ref[2], dec, dmask, reduction="sum")
        return kl / batch_size

    def forward(self, speech, speech_lengths, text, text_lengths, **kwargs):
        if not self.training:
            self.set_system(self.aio.largest)
            return ESPnetASRModel.forward(self, speech, speech_lengths, text, text_lengths, **kwargs)
        self.prepare()
        cfg = self.aio
        plan = seeded_plan(cfg, self.aio_seed, int(self.aio_forwards))
        self.aio_forwards += 1
        state = torch.get_rng_state()
        total, stats, ref, weight = None, {}, None, None
        for i, system in enumerate(plan):
            torch.set_rng_state(state)          # the same SpecAugment and dropout for every system
            self.set_system(system)
            if i == 0:                          # the largest: ESPnet's loss and the teacher's KL
                loss, st, weight = MixedPrecisionESPnetModel.forward(self, speech, speech_lengths, text, text_lengths,
                                                                     **kwargs)
                ref = tuple(None if t is None else t.detach() for t in self._posteriors(text_lengths))
                stats.update({k: v for k, v in st.items() if k != "loss"})
                stats["loss_largest"] = loss.detach()
            else:
                self._seen.clear()
                loss, _, _ = ESPnetASRModel.forward(self, speech, speech_lengths, text, text_lengths, **kwargs)
                if cfg.kl_from == "largest" and cfg.kl_weight > 0:
                    loss = loss + cfg.kl_weight * self._kl_to(ref, text_lengths, text.size(0))
                elif cfg.kl_from == "teacher" and cfg.kl_weight > 0:
                    loss = loss + cfg.kl_weight * self._kl_to_teacher(text_lengths, text.size(0))
                stats["loss_smallest" if i == 1 else f"loss_sampled{i - 1}"] = loss.detach()
            total = loss if total is None else total + loss
        self.set_system(cfg.largest)
        stats["loss"] = total.detach()
        return force_gatherable((total, stats, weight), total.device)


def _slice_state(state, system, cfg, lay, bits=None):
    """The state of one system from the nested (or float) model's state (lay: its `layout`): its blocks, its
    feed-forward units and (quantized) the steps of its bit-width as plain quantizers' log_step."""
    u = cfg.units(system)
    prefix, firsts, seconds = lay
    out = {}
    for k, v in state.items():
        if k.startswith(("mpq_", "aio_")):
            continue
        if k.startswith(prefix):
            if int(k[len(prefix):].split(".")[0]) >= system.depth:
                continue
            module, _, leaf = k.rpartition(".")
            owner = module.split(".weight_quantizer")[0]
            if owner in firsts and leaf in ("weight", "bias", "log_step"):
                v = v[:u]                       # its units are its outputs (and per-channel steps)
            elif owner in seconds and module == owner and leaf == "weight":
                v = v[:, :u]                    # its units are its inputs
        if ".weight_quantizer.quantizers." in k:
            head, label = k.split(".weight_quantizer.quantizers.")
            label, rest = label.split(".", 1)
            if bits is None or label != bits_label(bits):
                continue
            k = f"{head}.weight_quantizer.{rest}"
        out[k] = v.clone()
    return out


def system_config(conf, system, cfg, quantized=True):
    """The plain training config of one nested system (quantized) or of its float slice."""
    out = copy.deepcopy(conf)
    for key in ("all_in_one", "teacher_model"):
        out.pop(key, None)
    out.update(model="espnet", teacher_kl_weight=0.0)
    enc = dict(out.get("encoder_conf") or {})
    if out.get("encoder") == "hf_ssl":   # transformers' names; the system's weights come from its checkpoint
        size = {"num_hidden_layers": system.depth, "intermediate_size": cfg.units(system)}
        enc.update(overrides={**(enc.get("overrides") or {}), **size}, pretrained=False)
        if enc.get("hf_config"):
            enc["hf_config"] = {**enc["hf_config"], **size}
    else:
        enc.update(num_blocks=system.depth, linear_units=cfg.units(system))
    out["encoder_conf"] = enc
    if quantized:
        out["quantization"] = {**{k: v for k, v in (conf.get("quantization") or {}).items() if k != "bits"},
                               "weight_bits": system.bits}
    else:
        out["quantization"] = None
    return out


def export_system(model, conf, system):
    """(config, state) of a nested system as a plain quantized ESPnet model (see the module doc)."""
    model.prepare()
    return (system_config(conf, system, model.aio),
            _slice_state(model.state_dict(), system, model.aio, layout(model), system.bits))


@torch.no_grad()
def export_float(float_model, conf, cfg, system):
    """(config, state) of the float model cut to a system's depth and width, its units ordered as the
    all-in-one run orders them (from the same float weights): the twin's starting point."""
    m = copy.deepcopy(float_model)
    for w_1, w_2 in feed_forwards(m).values():
        order_units(w_1, w_2)
    return system_config(conf, system, cfg, quantized=False), _slice_state(m.state_dict(), system, cfg, layout(m))
