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

import torch
import yaml
from espnet2.tasks.asr import ASRTask
from espnet2.utils.nested_dict_action import NestedDictAction

from mpq_plugins.quant import QuantConfigError, quantize_


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
            quantize_(model, q, where=where)
        return model

    @classmethod
    def build_optimizers(cls, args, model):
        """ESPnet's optimizers, with the quantizers' log-steps moved to a group without weight
        decay: decay would pull every log-step towards 0, i.e. every step towards 1."""
        optimizers = super().build_optimizers(args, model)
        return [exclude_quantizers_from_weight_decay(o, model) for o in optimizers]


def exclude_quantizers_from_weight_decay(optimizer, model):
    qparams = {id(p) for n, p in model.named_parameters() if "_quantizer." in n}
    if not qparams or not hasattr(optimizer, "param_groups"):
        return optimizer
    moved = []
    for group in optimizer.param_groups:
        moved += [p for p in group["params"] if id(p) in qparams]
        group["params"] = [p for p in group["params"] if id(p) not in qparams]
    optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
    if moved:
        optimizer.add_param_group({"params": moved, "weight_decay": 0.0})
    return optimizer


def read_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: not an ESPnet config (expected a mapping)")
    return conf


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


def load_asr_model(config_path, model_file, device="cpu"):
    """(model in eval mode, config dict) from an ESPnet config.yaml and a .pth checkpoint or packed file."""
    if str(model_file).endswith(".safetensors"):
        from mpq_plugins.quant.export import load_packed
        model, conf = load_packed(model_file, device)
        return model, conf
    conf = read_config(config_path)
    model = build_from_config(conf, str(config_path))
    try:
        state = torch.load(model_file, map_location=device, weights_only=True)
    except Exception as e:   # torch raises several kinds for a truncated or foreign file
        raise ValueError(f"cannot load checkpoint {model_file}: {str(e).splitlines()[0]}") from None
    load_state_strict(model, state, str(model_file))
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
