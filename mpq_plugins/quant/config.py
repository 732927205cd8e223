"""The `quantization:` section of a training yaml, and `quantize_(model, config)`.

    quantization:
      weight_bits: 4          # bit-width of every quantized weight (2..8)
      per_channel: true       # one step per output channel (false: one per tensor)
      act_bits: null          # 8 or 4: quantize the inputs of Linear and conv layers too
      act_mode: lsq           # lsq (learnt step) or minmax (moving average of the largest value)
      modules: [all]          # groups (GROUPS below) or regular expressions over module names
      bits:                   # per-module bit-widths: regular expression -> bits, first match wins
        'encoder\\.embed\\..*': 8
      mixed_precision:        # learn the bit-widths (mpq_plugins/quant/mpq.py)
        method: one_stage
        budget: {avg_bits: 3.0}

Every module whose full name matches one of `modules` and is a Linear, Conv1d, Conv2d or
Embedding is swapped for its quantization-aware version (mpq_plugins.quant.layers).
"""
import dataclasses
import re

from mpq_plugins.quant.layers import QUANT_CLASS, QUANT_LAYERS
from mpq_plugins.quant.numerics import check_bits

_N = r"\d+"
GROUPS = {   # the parts of an ESPnet Conformer that can be quantized, by module name
    "subsampling": r"encoder\.embed\.(conv\.\d+|out\.0)",
    "attention": rf"encoder\.encoders\.{_N}\.self_attn\.linear_(q|k|v|out|pos)",
    "feed_forward": rf"encoder\.encoders\.{_N}\.feed_forward(_macaron)?\.w_[12]",
    "conv_module": rf"encoder\.encoders\.{_N}\.conv_module\.(pointwise_conv1|depthwise_conv|pointwise_conv2)",
    "decoder_attention": rf"decoder\.decoders\.{_N}\.(self_attn|src_attn)\.linear_(q|k|v|out)",
    "decoder_feed_forward": rf"decoder\.decoders\.{_N}\.feed_forward\.w_[12]",
    "decoder_embed": r"decoder\.embed\.0",
    "decoder_output": r"decoder\.output_layer",
    "ctc": r"ctc\.ctc_lo",
}


class QuantConfigError(ValueError):
    pass


def from_mapping(cls, d, where, error=QuantConfigError):
    """cls(**d) for a dataclass cls; a non-mapping or an unknown key is one error naming `where`."""
    if not isinstance(d, dict):
        raise error(f"{where}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**d)


@dataclasses.dataclass
class QuantConfig:
    weight_bits: int = 8
    per_channel: bool = True
    act_bits: int = None
    act_mode: str = "lsq"
    modules: list = dataclasses.field(default_factory=lambda: ["all"])
    bits: dict = dataclasses.field(default_factory=dict)
    mixed_precision: dict = None

    @classmethod
    def from_dict(cls, d, where="quantization"):
        c = from_mapping(cls, d, where)
        try:
            check_bits(c.weight_bits, "weight_bits")
            if c.act_bits is not None:
                check_bits(c.act_bits, "act_bits")
            for pat, b in c.bits.items():
                check_bits(b, f"bits[{pat!r}]")
        except ValueError as e:
            raise QuantConfigError(f"{where}: {e}") from None
        if c.act_mode not in ("lsq", "minmax"):
            raise QuantConfigError(f"{where}: act_mode {c.act_mode!r} is not lsq or minmax")
        if not isinstance(c.modules, list) or not c.modules:
            raise QuantConfigError(f"{where}: modules must be a non-empty list")
        if c.mixed_precision is not None:
            from mpq_plugins.quant.mpq import MixedPrecisionConfig
            from mpq_plugins.quant.search import BudgetError
            try:
                c.mpq = MixedPrecisionConfig.from_dict(c.mixed_precision, f"{where}: mixed_precision")
            except BudgetError as e:
                raise QuantConfigError(str(e)) from None
        return c


def _compile(pattern, where):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise QuantConfigError(f"{where}: {pattern!r} is not a valid regular expression ({e})") from None


def plan(model, config, where="quantization"):
    """{module name: bits} of the modules config quantizes; every pattern must match something."""
    pats = []
    for m in config.modules:
        if m == "all":
            pats += [(m, _compile(p, where)) for p in GROUPS.values()]
        else:
            pats.append((m, _compile(GROUPS.get(m, m), where)))
    names = [n for n, mod in model.named_modules() if type(mod) in QUANT_CLASS or isinstance(mod, QUANT_LAYERS)]
    chosen = {}
    for label, rx in pats:
        hit = [n for n in names if rx.fullmatch(n)]
        if not hit and label != "all":
            raise QuantConfigError(f"{where}: modules entry {label!r} matches no Linear, Conv or Embedding "
                                   f"module of the model (groups: {', '.join(GROUPS)})")
        chosen.update({n: config.weight_bits for n in hit})
    for pat, b in config.bits.items():
        rx = _compile(pat, where)
        hit = [n for n in chosen if rx.fullmatch(n)]
        if not hit:
            raise QuantConfigError(f"{where}: bits entry {pat!r} matches none of the quantized modules")
        for n in hit:
            chosen[n] = b
    return dict(sorted(chosen.items()))


def quantize_(model, config, where="quantization"):
    """Swap the modules config chooses for quantization-aware ones, in place. Returns {name: bits}."""
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config, where)
    chosen = plan(model, config, where)
    for name, bits in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        mod = getattr(parent, child)
        if isinstance(mod, QUANT_LAYERS):
            raise QuantConfigError(f"{where}: {name} is quantized already")
        new = QUANT_CLASS[type(mod)].from_float(mod, bits, config.per_channel, config.act_bits, config.act_mode)
        setattr(parent, child, new)
    if config.mixed_precision is not None:
        from mpq_plugins.quant.mpq import attach_mixed
        if config.mpq.method not in ("one_stage", "supernet"):
            raise QuantConfigError(f"{where}: mixed_precision method {config.mpq.method} chooses the bits before "
                                   "training (run.sh stage 6 runs its search, then trains with the bits it chose)")
        attach_mixed(model, list(chosen), config.mpq.candidates, config.per_channel)
    return chosen


def quantized_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


def bit_allocation(model):
    return {n: m.weight_quantizer.bits for n, m in quantized_modules(model).items()}
