"""quantize_ on a real ESPnet Conformer: it swaps every targeted module and nothing else, keeps
parameter names (float checkpoints load), and its config errors are clear."""
import pytest
import torch

from mpq_plugins.espnet.groups import CONFORMER as GROUPS
from mpq_plugins.espnet.groups import groups_for
from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.quant import QuantConfigError, bit_allocation, quantize_
from mpq_plugins.quant.layers import QUANT_LAYERS, QConv1d, QEmbedding, QLinear
from tests.fixtures import tiny_asr_model


def expected_targets(model):
    import re
    return sorted(n for n, m in model.named_modules()
                  if type(m) in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)
                  and any(re.fullmatch(p, n) for p in GROUPS.values()))


def test_swap_covers_every_target_and_nothing_else():
    model = tiny_asr_model()
    before = {n: type(m) for n, m in model.named_modules()}
    targets = expected_targets(model)
    names_before = [n for n, _ in model.named_parameters()]
    chosen = quantize_(model, {"weight_bits": 4}, GROUPS)
    assert sorted(chosen) == targets
    # every Linear/Conv/Embedding of the Conformer is a target: nothing float is left
    assert not [n for n, m in model.named_modules()
                if type(m) in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)]
    for group in ("subsampling", "attention", "feed_forward", "conv_module", "decoder_attention",
                  "decoder_feed_forward", "decoder_embed", "decoder_output", "ctc"):
        assert any(__import__("re").fullmatch(GROUPS[group], n) for n in chosen), group
    after = {n: type(m) for n, m in model.named_modules()}
    changed = {n for n in before if after.get(n) is not before[n]}
    assert changed == set(targets)
    assert isinstance(model.decoder.embed[0], QEmbedding)
    assert isinstance(model.encoder.encoders[0].conv_module.depthwise_conv, QConv1d)
    # the float parameter names are kept; the quantizers add their steps
    names_after = [n for n, _ in model.named_parameters()]
    assert [n for n in names_after if "quantizer" not in n] == names_before
    assert len([n for n in names_after if n.endswith("weight_quantizer.log_step")]) == len(targets)


def test_float_checkpoint_loads_and_model_runs():
    fp32 = tiny_asr_model()
    q = tiny_asr_model()
    quantize_(q, {"weight_bits": 8, "modules": ["attention", "feed_forward"]}, GROUPS)
    missing, unexpected = q.load_state_dict(fp32.state_dict(), strict=False)
    assert unexpected == [] and all("quantizer" in k for k in missing)
    speech = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6000])
    text = torch.randint(2, 10, (2, 5))
    loss, stats, _ = q(speech, lengths, text, torch.tensor([5, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    lin = q.encoder.encoders[0].feed_forward.w_1
    assert isinstance(lin, QLinear) and lin.weight_quantizer.log_step.grad is not None
    assert lin.weight.grad is not None


def test_per_module_bits_and_activation_quantizers():
    model = tiny_asr_model()
    quantize_(model, {"weight_bits": 4, "act_bits": 8, "bits": {r"encoder\.embed\..*": 8, "ctc.ctc_lo": 2}}, GROUPS)
    alloc = bit_allocation(model)
    assert alloc["encoder.embed.conv.0"] == 8 and alloc["ctc.ctc_lo"] == 2
    assert alloc["encoder.encoders.0.feed_forward.w_1"] == 4
    assert model.ctc.ctc_lo.input_quantizer.bits == 8
    assert model.decoder.embed[0].input_quantizer is None


@pytest.mark.parametrize("conf,message", [
    ({"weight_bits": 9}, "weight_bits 9 is not one of 1, 1.6 (ternary), 2"),
    ({"weight_bits": 1.5}, "weight_bits 1.5 is not one of"),
    ({"weight_bit": 4}, "unknown key(s) weight_bit"),
    ({"modules": ["no_such_group"]}, "'no_such_group' matches no Linear"),
    ({"modules": ["encoder.encoders.(("]}, "not a valid regular expression"),
    ({"bits": {"decoder.nothing": 4}}, "matches none of the quantized modules"),
    ({"bits": {"ctc.ctc_lo": 16}}, "16 is not one of"),
    ({"act_bits": 8, "act_mode": "ema"}, "act_mode 'ema'"),
])
def test_bad_config_is_one_clear_error(conf, message):
    model = tiny_asr_model()
    with pytest.raises(QuantConfigError) as e:
        quantize_(model, conf, GROUPS, where="conf/quant/x.yaml: quantization")
    assert message in str(e.value) and "conf/quant/x.yaml" in str(e.value)
    assert not any(isinstance(m, QUANT_LAYERS) for m in model.modules())   # nothing was swapped


def test_quant_task_optimizer_keeps_weight_decay_off_the_steps():
    model = tiny_asr_model()
    quantize_(model, {"weight_bits": 8, "act_bits": 8}, GROUPS)
    args = QuantASRTask.get_parser().parse_args([])
    args.optim, args.optim_conf = "adam", {"lr": 1e-3, "weight_decay": 1e-6}
    (opt,) = QuantASRTask.build_optimizers(args, model)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(decay) == {id(p) for p in names.values()}        # every parameter once
    for n, p in names.items():
        assert decay[id(p)] == (0.0 if "_quantizer." in n else 1e-6), n
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_groups_are_the_callers_and_all_without_groups_is_every_layer():
    model = tiny_asr_model()
    assert groups_for(model) == GROUPS                          # the Conformer's, from its encoder's class
    every = sorted(n for n, m in model.named_modules()
                   if type(m) in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding))
    assert sorted(quantize_(model, {"weight_bits": 4})) == every
    with pytest.raises(QuantConfigError, match="groups: none"):
        quantize_(tiny_asr_model(), {"weight_bits": 4, "modules": ["attention"]})   # a name needs the groups
