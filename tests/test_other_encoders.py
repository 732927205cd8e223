"""Models other than our Conformer: a stock ESPnet E-Branchformer and Transformer are quantized through
their module groups (every weight layer of the encoder in a group), trained for a step with uniform and
one-stage mixed precision, and packed to a file whose size is the bit accounting's."""
import argparse
import os

import pytest
import torch

from mpq_plugins.espnet.groups import groups_for
from mpq_plugins.espnet.load import load_packed, model_config, pack_asr_model
from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.quant import quantized_modules
from mpq_plugins.quant.config import plan
from tests.fixtures import tiny_asr_conf, train_updates

CONFS = {"e_branchformer": os.path.join(os.path.dirname(__file__), "conf", "train_tiny_ebf.yaml")}


def transformer_conf():
    conf = tiny_asr_conf()
    conf.update(encoder="transformer", encoder_conf={"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                                      "num_blocks": 2, "input_layer": "conv2d"})
    return conf


def conf_for(kind):
    return transformer_conf() if kind == "transformer" else tiny_asr_conf(CONFS[kind])


def batch():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6400]),
            torch.randint(2, 10, (2, 5), generator=g), torch.tensor([5, 4]))


@pytest.mark.parametrize("kind", ["e_branchformer", "transformer"])
def test_every_encoder_weight_layer_is_in_a_group(kind):
    model = QuantASRTask.build_model(argparse.Namespace(**conf_for(kind)))
    groups = groups_for(model)
    assert groups is not None
    covered = set(plan(model, argparse.Namespace(modules=["all"], weight_bits=4, bits={}), groups))
    layers = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))
              and n.startswith("encoder.")}
    assert layers - covered == set()


ONE_STAGE = {"weight_bits": 4, "mixed_precision": {"candidates": [1, 1.6, 2, 4, 8], "budget": {"ratio": 3.0},
                                                   "search_steps": 1}}


@pytest.mark.parametrize("kind,quant", [(k, q) for k in ("e_branchformer", "transformer")
                                        for q in ({"weight_bits": 8}, {"weight_bits": 4}, ONE_STAGE)])
def test_uniform_and_one_stage_train_and_pack_at_their_accounted_size(kind, quant, tmp_path):
    conf = conf_for(kind)
    mixed = "mixed_precision" in quant
    conf.update(quantization=quant, model="mpq_espnet" if mixed else "espnet", teacher_kl_weight=0.0)
    model = QuantASRTask.build_model(argparse.Namespace(**conf))
    train_updates(model, conf, 2)
    if mixed:
        from mpq_plugins.quant import with_fixed_bits
        from mpq_plugins.quant.mixed import finalize
        bits = finalize(model)
        conf["quantization"], conf["model"] = with_fixed_bits(quant, bits), "espnet"
        plain = QuantASRTask.build_model(argparse.Namespace(**conf))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mpq_")})
        model = plain
    model.eval()
    report = pack_asr_model(model, model_config(conf), tmp_path / "m.safetensors")
    assert abs(report["disk_bytes"] - report["accounted_bytes"]) / report["disk_bytes"] < 0.01 + 4096 / report["disk_bytes"]
    assert len(quantized_modules(model)) > 10
    back, _ = load_packed(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(back.encode(*batch()[:2])[0], model.encode(*batch()[:2])[0])
