"""ESPnet's ASR model training nested systems of different encoder depth, feed-forward width and weight
precision in one run (one-pass all-in-one compression: mpq_plugins.quant.nested).

`AllInOneESPnetModel` is registered with ESPnet's model choices as `model: mpq_all_in_one` (task.py).
At its first training forward (after ESPnet's --init_param loaded the float weights) it orders every
encoder feed-forward's units by importance; then each forward trains the largest system, the smallest
and `sampled` others drawn for that step (the same draw on every rank and after a resumption), all on
the same batch with the same random state (SpecAugment, dropout), summing their losses: the largest
learns from the float teacher (the fine-tuning option teacher_kl_weight), the others from the largest's
posteriors (`kl_from: largest`) or from the teacher. Validation and decoding use the largest system.
What two systems of an update compute alike is computed once: the encoder's input layer (the conv2d
subsampling) for systems of the same bit-width (`SharedForward`: the later system takes the
output and the random state it left, so it computes exactly what running it again would; the gradients of
both flow into one backward). A narrow feed-forward computes only its units (narrow_feed_forward).

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
from mpq_plugins.quant.layers import QLinear
from mpq_plugins.quant.nested import (AllInOneConfig, HeadMask, NestedWeightQuantizer, UnitMask, narrow_feed_forward,
                                      nested_quantizers, order_heads, order_units, seeded_plan, set_bits)
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


_MIXED_CLASSES = {}


def with_mixin(module, mixin):
    """Turn a module into the subclass of its class with `mixin` first, in place (its state is kept)."""
    cls = type(module)
    if not issubclass(cls, mixin):
        if (mixin, cls) not in _MIXED_CLASSES:
            name = mixin.__name__.replace("Mixin", "")
            _MIXED_CLASSES[mixin, cls] = type(f"{name}{cls.__name__}", (mixin, cls), {})
        module.__class__ = _MIXED_CLASSES[mixin, cls]
    return module


class SharedForward:
    """A module whose output is computed once per key while `shared` is a dict (one training forward of the
    nested model): a later call with the same key returns the stored output and sets the random state the
    first call left, which is exactly what running it again on the same input from the same random state
    gives. `shared_key` says what the output depends on besides the input (e.g. the bit-width)."""

    shared = None
    shared_key = None

    def forward(self, *args, **kwargs):
        if self.shared is None:
            return super().forward(*args, **kwargs)
        if self.shared_key in self.shared:
            out, rng = self.shared[self.shared_key]
            set_rng_state(rng)
            return out
        out = super().forward(*args, **kwargs)
        self.shared[self.shared_key] = (out, rng_state(_device_of(out)))
        return out


def share_forward(module):
    """Turn a module into its SharedForward class, in place (its state and its own forward are kept)."""
    return with_mixin(module, SharedForward)


def _device_of(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.device if isinstance(out, torch.Tensor) else torch.device("cpu")


def rng_state(device):
    """The random state that SpecAugment and dropout draw from on `device`: the CPU's, and the GPU's there."""
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device)


def set_rng_state(state):
    cpu, gpu, device = state
    torch.set_rng_state(cpu)
    if gpu is not None:
        torch.cuda.set_rng_state(gpu, device)


def limit_depth(stack):
    """Turn a block stack into its depth-limited class, in place."""
    return with_mixin(stack, DepthMixin)


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


ATTENTION_NAMES = ("self_attn", "attn")   # a block's self-attention: Conformer, Transformer / E-Branchformer
ATTENTION_PARTS = ("linear_q", "linear_k", "linear_v", "linear_out")


def attentions(model):
    """{name: module} of the encoder blocks' ESPnet multi-head self-attentions (transformers' are not narrowed)."""
    if not hasattr(model.encoder, "encoders"):
        return {}
    prefix, stack = block_stack(model)
    out = {}
    for i, block in enumerate(stack._modules.values()):
        for a in ATTENTION_NAMES:
            mod = getattr(block, a, None)
            if mod is not None and all(hasattr(mod, k) for k in ATTENTION_PARTS + ("h", "d_k")):
                out[f"{prefix}{i}.{a}"] = mod
                break
    return out


def head_inputs(att):
    """The layers of an attention whose output rows are grouped by head (query, key, value, positions)."""
    return [att.linear_q, att.linear_k, att.linear_v] + ([att.linear_pos] if hasattr(att, "linear_pos") else [])


def head_biases(att):
    return [getattr(att, b) for b in ("pos_bias_u", "pos_bias_v") if isinstance(getattr(att, b, None), torch.Tensor)]


def layout(model):
    """What slicing a state needs: the block prefix, the names of the feed-forwards' first and second Linears,
    of the attentions' head-grouped inputs, outputs and per-head biases, and the head size."""
    names = {id(m): n for n, m in model.named_modules()}
    params = {id(p): n for n, p in model.named_parameters()}
    ffs = feed_forwards(model).values()
    atts = attentions(model).values()
    return {"prefix": block_stack(model)[0], "firsts": {names[id(a)] for a, _ in ffs},
            "seconds": {names[id(b)] for _, b in ffs},
            "head_rows": {names[id(lin)] for att in atts for lin in head_inputs(att)},
            "head_cols": {names[id(att.linear_out)] for att in atts},
            "head_params": {params[id(t)] for att in atts for t in head_biases(att)},
            "d_k": next(iter(atts)).d_k if atts else None}


def encoder_size(model):
    """(blocks, feed-forward units, attention heads or None) of the model's encoder."""
    ffs = feed_forwards(model)
    if not ffs:
        raise ValueError(f"{type(model.encoder).__name__}: no feed-forward modules to narrow")
    atts = attentions(model)
    return (len(encoder_blocks(model)), next(iter(ffs.values()))[0].weight.shape[0],
            next(iter(atts.values())).h if atts else None)


def check_all_in_one(model, section, where="all_in_one"):
    blocks, units, heads = encoder_size(model)
    return AllInOneConfig.from_dict(section, blocks, units, where, heads)


@torch.no_grad()
def order_model(model):
    """Order every encoder feed-forward's units and attention's heads by importance (the function stays)."""
    for w_1, w_2 in feed_forwards(model).values():
        order_units(w_1, w_2)
    for att in attentions(model).values():
        order_heads(head_inputs(att), att.linear_out, att.h, head_biases(att))


def narrow_attention(att, kept):
    """An ESPnet multi-head attention cut to its first `kept` heads, in place: layers of the narrow shapes
    (their weights come from a checkpoint), ESPnet's own forward (it reshapes by h and d_k)."""
    d = kept * att.d_k
    for name in ("linear_q", "linear_k", "linear_v", "linear_pos"):
        lin = getattr(att, name, None)
        if lin is not None:
            setattr(att, name, torch.nn.Linear(lin.in_features, d, bias=lin.bias is not None))
    lin = att.linear_out
    att.linear_out = torch.nn.Linear(d, lin.out_features, bias=lin.bias is not None)
    for b in ("pos_bias_u", "pos_bias_v"):
        if isinstance(getattr(att, b, None), torch.Tensor):
            setattr(att, b, torch.nn.Parameter(getattr(att, b).detach()[:kept].clone()))
    att.h = kept


def heads_kept_encoder(base):
    """ESPnet's encoder class `base` with `attention_heads_kept`: every self-attention keeps only its first
    heads (an exported all-in-one system of narrower attention). Registered as `<name>_heads` (task.py)."""
    class HeadsKept(base):
        def __init__(self, *args, attention_heads_kept=None, **kwargs):
            super().__init__(*args, **kwargs)
            if attention_heads_kept is not None:
                for att in self.encoders._modules.values():
                    for a in ATTENTION_NAMES:
                        if hasattr(att, a):
                            narrow_attention(getattr(att, a), int(attention_heads_kept))
                            break
    HeadsKept.__name__ = HeadsKept.__qualname__ = f"{base.__name__}HeadsKept"
    return HeadsKept


class AllInOneESPnetModel(MixedPrecisionESPnetModel):
    aio = None

    def setup_all_in_one(self, cfg, teacher=None, kl_weight=0.0, seed=0):
        """After quantize_ and attach_nested: the systems (cfg: AllInOneConfig), the teacher of the largest."""
        self.setup_mixed_precision(None, teacher, kl_weight)
        self.aio, self.aio_seed = cfg, seed
        self.register_buffer("aio_forwards", torch.zeros(()))   # training forwards so far: the plan's step
        self.register_buffer("aio_ordered", torch.zeros(()))    # 1 once the feed-forward units are ordered
        limit_depth(block_stack(self)[1])
        self._narrow, self._unit_masks, self._head_masks = [], [], []
        for w_1, w_2 in feed_forwards(self).values():
            if isinstance(w_1, QLinear) and isinstance(w_2, QLinear):
                self._narrow.append((w_1, w_2))
            else:
                mask = UnitMask(w_1.weight.shape[0])
                w_1.register_forward_hook(mask)
                self._unit_masks.append(mask)
        # the encoder's input layer (ESPnet's encoders: its subsampling): its output differs only by bit-width
        # (not the frontend's: the normalization changes it in place)
        self._shared = [m for m in (getattr(self.encoder, "embed", None),) if m is not None]
        for m in self._shared:
            share_forward(m)
            m.by_bits = any(isinstance(q, NestedWeightQuantizer) for q in m.modules())
        if any(s.heads != 1 for s in cfg.system_list):
            for att in attentions(self).values():
                mask = HeadMask(att.h, att.d_k)
                att.linear_out.register_forward_pre_hook(mask)
                self._head_masks.append(mask)
        self.set_system(cfg.largest)

    def set_system(self, system):
        block_stack(self)[1].depth = system.depth
        units = self.aio.units(system)
        for w_1, w_2 in self._narrow:
            narrow_feed_forward(w_1, w_2, None if units >= w_1.weight.shape[0] else units)
        for mask in self._unit_masks:
            mask.width = units
        for m in self._shared:
            m.shared_key = system.bits if m.by_bits else None
        for mask in self._head_masks:
            mask.width = self.aio.kept_heads(system)
        set_bits(self, system.bits)

    @torch.no_grad()
    def prepare(self):
        """Order the feed-forward units and attention heads and start every bit-width's step from the ordered
        weights, once."""
        if float(self.aio_ordered) == 1:
            return
        order_model(self)
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
        state = rng_state(speech.device)
        for m in self._shared:
            m.shared = {}
        try:
            return self._train_forward(plan, state, speech, speech_lengths, text, text_lengths, **kwargs)
        finally:
            for m in self._shared:
                m.shared = None
            self.set_system(cfg.largest)

    def _train_forward(self, plan, state, speech, speech_lengths, text, text_lengths, **kwargs):
        cfg = self.aio
        total, stats, ref, weight = None, {}, None, None
        for i, system in enumerate(plan):
            set_rng_state(state)                # the same SpecAugment and dropout for every system
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
                if cfg.balance == "largest":    # the size of the largest's loss, the gradient of its own
                    loss = loss * (stats["loss_largest"] / loss.detach().clamp_min(1e-8))
            total = loss if total is None else total + loss
        stats["loss"] = total.detach()
        return force_gatherable((total, stats, weight), total.device)


def _slice_state(state, system, cfg, lay, bits=None):
    """The state of one system from the nested (or float) model's state (lay: its `layout`): its blocks, its
    feed-forward units and attention heads and (quantized) the steps of its bit-width as plain quantizers'
    log_step."""
    u = cfg.units(system)
    h = None if lay["d_k"] is None else cfg.kept_heads(system) * lay["d_k"]
    heads = system.heads != 1
    prefix = lay["prefix"]
    out = {}
    for k, v in state.items():
        if k.startswith(("mpq_", "aio_")):
            continue
        if k.startswith(prefix):
            if int(k[len(prefix):].split(".")[0]) >= system.depth:
                continue
            module, _, leaf = k.rpartition(".")
            owner = module.split(".weight_quantizer")[0]
            if owner in lay["firsts"] and leaf in ("weight", "bias", "log_step"):
                v = v[:u]                       # its units are its outputs (and per-channel steps)
            elif owner in lay["seconds"] and module == owner and leaf == "weight":
                v = v[:, :u]                    # its units are its inputs
            elif heads and owner in lay["head_rows"] and leaf in ("weight", "bias", "log_step"):
                v = v[:h]                       # heads are its output rows
            elif heads and owner in lay["head_cols"] and module == owner and leaf == "weight":
                v = v[:, :h]                    # heads are its input columns
            elif heads and k in lay["head_params"]:
                v = v[: h // lay["d_k"]]        # a row a head
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
        if system.heads != 1:   # ESPnet's encoder ties the attention's width to the model's: ours cuts it
            out["encoder"] = f"{out['encoder']}_heads"
            enc["attention_heads_kept"] = cfg.kept_heads(system)
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
    order_model(m)
    return system_config(conf, system, cfg, quantized=False), _slice_state(m.state_dict(), system, cfg, layout(m))
