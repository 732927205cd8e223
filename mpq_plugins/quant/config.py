"""The `quantization:` section of a training yaml, and `quantize_(model, config, groups)`.

    quantization:
      weight_bits: 4          # bit-width of every quantized weight: 1, 1.6 (ternary), 2..8
      per_channel: true       # one step per output channel (false: one per tensor)
      act_bits: null          # 8 or 4: quantize the inputs of Linear and conv layers too
      act_mode: lsq           # lsq (learnt step) or minmax (moving average of the largest value)
      modules: [all]          # group names (see `groups`) or regular expressions over module names
      bits:                   # per-module bit-widths: regular expression -> bits, a later entry wins
        'encoder\\.embed\\..*': 8   # with mixed_precision: kept out of the search, paid out of the budget first
      step_lr: null           # learning rate of the quantizers' log-steps (null: the fine-tuning lr)
      mixed_precision:        # learn or search the bit-widths (MixedPrecisionConfig below)
        budget: {avg_bits: 3.0}

Every module whose full name matches one of `modules` and is a Linear, Conv1d, Conv2d or
Embedding is swapped for its quantization-aware version (mpq_plugins.quant.layers). Which names
make a group ("attention", "feed_forward", ...) depends on the model: the caller passes `groups`
({group name: regular expression}); the ESPnet adapter has them per encoder type
(mpq_plugins.espnet.groups). Without groups, "all" is every supported layer.
"""
import dataclasses
import re

from mpq_plugins.quant.allocation import Budget, BudgetError, check_candidates
from mpq_plugins.quant.layers import QUANT_CLASS, QUANT_LAYERS
from mpq_plugins.quant.mixed import attach_mixed
from mpq_plugins.quant.numerics import check_bits


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
class MixedPrecisionConfig:
    """The `mixed_precision:` part of a `quantization:` section: the candidates, the budget, and the
    options of the search. Which method uses it (one-stage, supernet, KL or Hessian search) is the
    quant conf's `method:`; a training config with this part trains a supernet (mixed.py).

        candidates: [2, 3, 4, 6, 8]
        budget: {avg_bits: 3.0}    # the whole packed file: stored bits a parameter (= 32 / ratio),
                                   # or {ratio: 10.7} over float32, or {size_mb: 1.2}
        search_steps: 200          # optimizer updates before the bits are fixed (one_stage, supernet)
        search_fraction: null      # or the search as a fraction of the run's optimizer updates: the quantize
                                   # stage turns it into search_steps from the run's length before training
        tau: [1.0, 0.1]            # Gumbel-softmax temperature, annealed geometrically over the whole search
        hard: false                # true: straight-through Gumbel (one candidate a forward, the soft gradient),
                                   # so the model searched is the model deployed
        size_weight: 20.0          # penalty per average bit above the budget (expected size): strong
                                   # enough that the search reaches the budget before the fix (at 2.0
                                   # a 3-bit search on the default corpus still expected 4.0 bits)
        size_weight_lr: 0.0        # > 0: after each update above the budget the weight grows by this times
                                   # the excess in average bits (dual ascent), so the search reaches any
                                   # budget (at 2.5 bits a fixed 20 left it at 2.76: the KL pulled back as hard)
        kl_after_fix: true         # keep the teacher's KL (fine-tuning option teacher_kl_weight) once the
                                   # bits are fixed (false: the teacher runs only while searching)
        search_loss: asr           # what the search trains on (one_stage, supernet): asr (ESPnet's loss plus the
                                   # teacher's KL) or teacher_kl (the teacher's KL alone: no reward for the
                                   # softer posteriors that coarse output layers give); both plus the size penalty
        logit_optim: adam          # adam: the logits in the optimizer, their own group at logit_lr (each moves
                                   # about logit_lr an update whatever its gradient); sgd: out of the optimizer,
                                   # moved by logit_lr x their gradient after each update (by their gradient)
        logit_lr: 0.05             # learning rate of the precision logits
        n_utts: 32                 # kl, hessian: held-out utterances for the sensitivities
        hutchinson_samples: 16     # hessian: Rademacher probes
    """
    candidates: list = dataclasses.field(default_factory=lambda: [2, 3, 4, 6, 8])
    budget: dict = None
    search_steps: int = 200
    search_fraction: float = None
    tau: list = dataclasses.field(default_factory=lambda: [1.0, 0.1])
    hard: bool = False
    size_weight: float = 20.0
    size_weight_lr: float = 0.0
    kl_after_fix: bool = True
    search_loss: str = "asr"
    logit_optim: str = "adam"
    logit_lr: float = 0.05
    n_utts: int = 32
    hutchinson_samples: int = 16

    @classmethod
    def from_dict(cls, d, where="mixed_precision"):
        if isinstance(d, dict) and "kl_weight" in d:
            raise QuantConfigError(f"{where}: kl_weight is now the fine-tuning option teacher_kl_weight "
                                   "(conf/finetune.yaml), the same teacher for every method")
        c = from_mapping(cls, d, where)
        try:
            c.candidates = check_candidates(c.candidates, f"{where}: candidates")
            if c.budget is None:
                raise QuantConfigError(f"{where}: budget is missing (avg_bits, ratio or size_mb)")
            c.budget_obj = Budget.from_dict(c.budget, f"{where}: budget")
        except BudgetError as e:
            raise QuantConfigError(str(e)) from None
        if c.budget_obj.avg_bits is not None and c.budget_obj.avg_bits < min(c.candidates):
            raise QuantConfigError(f"{where}: budget avg_bits {c.budget_obj.avg_bits} is below what the smallest "
                                   f"candidate ({min(c.candidates)} bits) allows")
        if not (isinstance(c.tau, list) and len(c.tau) == 2 and all(t > 0 for t in c.tau)):
            raise QuantConfigError(f"{where}: tau must be [start, end], both positive")
        if not isinstance(c.size_weight_lr, (int, float)) or c.size_weight_lr < 0:
            raise QuantConfigError(f"{where}: size_weight_lr must be a number >= 0")
        for key in ("kl_after_fix", "hard"):
            if not isinstance(getattr(c, key), bool):
                raise QuantConfigError(f"{where}: {key} must be true or false")
        if c.search_loss not in ("asr", "teacher_kl"):
            raise QuantConfigError(f"{where}: search_loss {c.search_loss!r} is not asr or teacher_kl")
        if c.logit_optim not in ("adam", "sgd"):
            raise QuantConfigError(f"{where}: logit_optim {c.logit_optim!r} is not adam or sgd")
        if c.search_fraction is not None and (isinstance(c.search_fraction, bool) or not
                                              isinstance(c.search_fraction, (int, float)) or not 0 < c.search_fraction <= 1):
            raise QuantConfigError(f"{where}: search_fraction must be a number in (0, 1], got {c.search_fraction!r}")
        if not isinstance(c.search_steps, int) or isinstance(c.search_steps, bool) or c.search_steps < 1:
            raise QuantConfigError(f"{where}: search_steps must be a positive integer")
        return c


@dataclasses.dataclass
class QuantConfig:
    weight_bits: int = 8
    per_channel: bool = True
    act_bits: int = None
    act_mode: str = "lsq"
    modules: list = dataclasses.field(default_factory=lambda: ["all"])
    bits: dict = dataclasses.field(default_factory=dict)
    step_lr: float = None
    mixed_precision: dict = None

    @classmethod
    def from_dict(cls, d, where="quantization"):
        c = from_mapping(cls, d, where)
        try:
            c.weight_bits = check_bits(c.weight_bits, "weight_bits")
            if c.act_bits is not None and (check_bits(c.act_bits, "act_bits") not in range(2, 9)):
                raise ValueError(f"act_bits {c.act_bits!r} is not one of 2..8")
            if not isinstance(c.bits, dict):
                raise ValueError(f"bits must be a mapping of patterns to bit-widths, got {c.bits!r}")
            c.bits = {pat: check_bits(b, f"bits[{pat!r}]") for pat, b in c.bits.items()}
        except ValueError as e:
            raise QuantConfigError(f"{where}: {e}") from None
        if c.step_lr is not None and (isinstance(c.step_lr, bool) or not isinstance(c.step_lr, (int, float))
                                      or not c.step_lr > 0):
            raise QuantConfigError(f"{where}: step_lr must be a positive number (or null: the fine-tuning lr)")
        if c.act_mode not in ("lsq", "minmax"):
            raise QuantConfigError(f"{where}: act_mode {c.act_mode!r} is not lsq or minmax")
        if not isinstance(c.modules, list) or not c.modules:
            raise QuantConfigError(f"{where}: modules must be a non-empty list")
        c.mpq = (MixedPrecisionConfig.from_dict(c.mixed_precision, f"{where}: mixed_precision")
                 if c.mixed_precision is not None else None)
        return c


def _compile(pattern, where):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise QuantConfigError(f"{where}: {pattern!r} is not a valid regular expression ({e})") from None


def plan(model, config, groups=None, where="quantization"):
    """{module name: bits} of the modules config quantizes; every pattern must match something.
    groups: {group name: regular expression over module names} of this kind of model."""
    groups = groups or {}
    layers = [n for n, mod in model.named_modules() if type(mod) in QUANT_CLASS or isinstance(mod, QUANT_LAYERS)]
    pats = []
    for m in config.modules:
        if m == "all":
            pats += [(m, _compile(p, where)) for p in groups.values()] if groups else [(m, re.compile(".*"))]
        else:
            pats.append((m, _compile(groups.get(m, m), where)))
    chosen = {}
    for label, rx in pats:
        hit = [n for n in layers if rx.fullmatch(n)]
        if not hit and label != "all":
            raise QuantConfigError(f"{where}: modules entry {label!r} matches no Linear, Conv or Embedding "
                                   f"module of the model (groups: {', '.join(groups) or 'none'})")
        chosen.update({n: config.weight_bits for n in hit})
    for pat, b in config.bits.items():
        rx = _compile(pat, where)
        hit = [n for n in chosen if rx.fullmatch(n)]
        if not hit:
            raise QuantConfigError(f"{where}: bits entry {pat!r} matches none of the quantized modules")
        for n in hit:
            chosen[n] = b
    return dict(sorted(chosen.items()))


def pinned(config, names):
    """The names a `bits:` entry of config matches: with mixed precision, the layers that keep those
    bits and are not searched (their bytes are paid out of the budget first)."""
    rxs = [re.compile(p) for p in config.bits]
    return [n for n in names if any(rx.fullmatch(n) for rx in rxs)]


def searched(config, chosen, where="quantization"):
    """The layers of `chosen` (plan's) a mixed-precision search chooses the bit-widths of: all but the pinned."""
    keep = set(pinned(config, chosen))
    out = [n for n in chosen if n not in keep]
    if config.mpq is not None and not out:
        raise QuantConfigError(f"{where}: every quantized layer has a bits: entry, so mixed_precision has "
                               "nothing to search (remove the entries or the mixed_precision part)")
    return out


def quantize_(model, config, groups=None, where="quantization"):
    """Swap the modules config chooses for quantization-aware ones, in place (with a mixed_precision
    part, each gets the candidates' quantizers of a search, but the layers a `bits:` entry pins).
    Returns {name: bits}."""
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config, where)
    chosen = plan(model, config, groups, where)
    search = searched(config, chosen, where) if config.mpq is not None else []
    for name, bits in chosen.items():
        mod = model.get_submodule(name)
        if isinstance(mod, QUANT_LAYERS):
            raise QuantConfigError(f"{where}: {name} is quantized already")
        model.set_submodule(name, QUANT_CLASS[type(mod)].from_float(mod, bits, config.per_channel,
                                                                    config.act_bits, config.act_mode))
    if config.mpq is not None:
        attach_mixed(model, search, config.mpq.candidates, config.per_channel, config.mpq.hard)
    return chosen


def with_fixed_bits(quant, bits):
    """The quantization section that rebuilds a model whose mixed precision is fixed: the same
    options, every layer's bit-width by its exact name, no mixed_precision part."""
    out = {k: v for k, v in (quant or {}).items() if k != "mixed_precision"}
    out["bits"] = {**(out.get("bits") or {}), **{re.escape(n): b for n, b in bits.items()}}
    return out
