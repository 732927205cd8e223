"""One-pass all-in-one compression on a real tiny ESPnet Conformer: the systems' list and its errors, unit
ordering that keeps the function, one training step over several systems, and exported systems that compute
exactly what the nested model computes in them."""
import argparse
import random

import pytest
import torch

from mpq_plugins.espnet.checkpoint import load_state_strict
from mpq_plugins.espnet.load import build_from_config
from mpq_plugins.espnet.nested import AllInOneESPnetModel, export_float, export_system, feed_forwards
from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.quant import QuantConfigError
from mpq_plugins.quant.nested import AllInOneConfig, AllInOneError, NestedWeightQuantizer, order_units, seeded_plan
from tests.fixtures import tiny_asr_conf, train_updates

AIO = {"depth": [2, 1], "ff": [1, 0.5], "bits": [4, 2], "sampled": 1}


def two_block_conf():
    conf = tiny_asr_conf()
    conf["encoder_conf"] = {**conf["encoder_conf"], "num_blocks": 2}
    return conf


def float_model_of():
    torch.manual_seed(0)
    return QuantASRTask.build_model(argparse.Namespace(**two_block_conf()))


def conf_of(aio=AIO, teacher=None):
    conf = two_block_conf()
    conf.update(model="mpq_all_in_one", quantization={"weight_bits": 8}, all_in_one=aio, teacher_model=teacher,
                teacher_kl_weight=1.0 if teacher else 0.0)
    return conf


def build(aio=AIO, teacher=None, float_state=None):
    conf = conf_of(aio, teacher)
    model = QuantASRTask.build_model(argparse.Namespace(**conf))
    if float_state is not None:
        model.load_state_dict(float_state, strict=False)        # as --init_param does
    return model, conf


def batch():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6400]),
            torch.randint(2, 10, (2, 5), generator=g), torch.tensor([5, 4]))


def test_the_systems_are_the_product_largest_first():
    cfg = AllInOneConfig.from_dict(AIO, n_blocks=2, n_units=64)
    assert [s.name for s in cfg.system_list] == ["d2_ff1_w4", "d2_ff1_w2", "d2_ff0p5_w4", "d2_ff0p5_w2",
                                                 "d1_ff1_w4", "d1_ff1_w2", "d1_ff0p5_w4", "d1_ff0p5_w2"]
    plan = cfg.plan(random.Random(0))
    assert plan[0] == cfg.largest and plan[1] == cfg.smallest and len(plan) == 3
    assert cfg.units(cfg.smallest) == 32
    one = AllInOneConfig.from_dict({"systems": [{"depth": 1, "ff": 1, "bits": 1.6}]}, 2, 64)
    assert [s.name for s in one.system_list] == ["d1_ff1_w1p6"] and one.plan(random.Random(0)) == one.system_list


@pytest.mark.parametrize("aio,message", [
    ({"depth": [3]}, "depth 3 is not a number of blocks of this encoder (1..2)"),
    ({"ff": [0.3]}, "ff 0.3 of 64 feed-forward units is not a whole number"),
    ({"bits": [4, 5.5]}, "5.5 is not one of 1, 1.6"),
    ({"bits": []}, "bits is an empty list"),
    ({"systems": []}, "systems is an empty list"),
    ({"depth": [2], "widths": [1]}, "unknown key(s) widths"),
    ({"kl_from": "smallest"}, "kl_from 'smallest'"),
    ({"balance": "mean"}, "balance 'mean' is not sum or largest"),
    ({"heads": [0.3]}, "heads 0.3 of 2 attention heads is not a whole number"),
    ({"heads": [0]}, "heads 0 is not a fraction in (0, 1]"),
])
def test_a_bad_system_list_is_one_error_before_training(aio, message):
    with pytest.raises(QuantConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(aio)


def test_ordering_heads_keeps_the_attention_and_puts_the_important_first():
    from espnet.nets.pytorch_backend.transformer.attention import RelPositionMultiHeadedAttention

    from mpq_plugins.espnet.nested import head_biases, head_inputs
    from mpq_plugins.quant.nested import order_heads
    torch.manual_seed(0)
    att = RelPositionMultiHeadedAttention(4, 16, 0.0).eval()
    for b in head_biases(att):
        torch.nn.init.normal_(b)
    x, pos = torch.randn(2, 5, 16), torch.randn(1, 9, 16)
    want = att(x, x, x, pos, None)
    order_heads(head_inputs(att), att.linear_out, att.h, head_biases(att))
    assert torch.allclose(att(x, x, x, pos, None), want, atol=1e-5)
    rows = torch.cat([lin.weight.reshape(4, -1) for lin in head_inputs(att)], 1).norm(dim=1)
    cols = att.linear_out.weight.reshape(16, 4, 4).transpose(0, 1).reshape(4, -1).norm(dim=1)
    assert torch.all((rows * cols)[:-1] >= (rows * cols)[1:])


def test_ordering_units_keeps_the_function_and_puts_the_important_first():
    torch.manual_seed(0)
    w1, w2 = torch.nn.Linear(6, 10), torch.nn.Linear(10, 6)
    x = torch.randn(3, 6)
    want = w2(torch.relu(w1(x)))
    order_units(w1, w2)
    assert torch.allclose(w2(torch.relu(w1(x))), want, atol=1e-6)
    score = w1.weight.norm(dim=1) * w2.weight.norm(dim=0)
    assert torch.all(score[:-1] >= score[1:])


HEADS = {"systems": [{"depth": 2, "ff": 1, "bits": 4}, {"depth": 2, "ff": 0.5, "heads": 0.5, "bits": 4},
                     {"depth": 1, "ff": 1, "heads": 0.5, "bits": 2}], "sampled": 1}


@pytest.mark.parametrize("aio", [AIO, HEADS], ids=["depth_ff_bits", "heads"])
def test_a_step_trains_several_systems_and_exported_systems_compute_the_same(tmp_path, aio):
    float_model = float_model_of()
    path = tmp_path / "fp32.pth"
    torch.save(float_model.state_dict(), path)
    model, conf = build(aio, teacher=str(path), float_state=float_model.state_dict())
    assert isinstance(model, AllInOneESPnetModel)
    assert all(isinstance(m.weight_quantizer, NestedWeightQuantizer) for m in model.modules()
               if hasattr(m, "weight_quantizer"))
    stats = train_updates(model, conf, 2)
    assert {"loss_largest", "loss_smallest", "loss_sampled1", "mpq_kl"} <= set(stats)
    assert float(model.aio_ordered) == 1 and int(model.aio_forwards) == 2
    assert len(list(model.encoder.encoders)) == 2 and len(model.encoder.encoders._modules) == 2
    model.eval()
    speech, lengths = batch()[:2]
    for system in model.aio.system_list:
        sys_conf, state = export_system(model, conf, system)
        plain = build_from_config(sys_conf, "exported")
        load_state_strict(plain, state, "exported")
        plain.eval()
        model.set_system(system)
        with torch.no_grad():
            want = model.encode(speech, lengths)[0]
            got = plain.encode(speech, lengths)[0]
        assert torch.allclose(got, want, atol=1e-5), system.name
        assert sys_conf["encoder_conf"]["num_blocks"] == system.depth and sys_conf["model"] == "espnet"
        if system.heads != 1:   # the exported attention has only its heads: 1 of 2
            assert sys_conf["encoder"] == "conformer_heads" and plain.encoder.encoders[0].self_attn.h == 1
            assert plain.encoder.encoders[0].self_attn.linear_q.weight.shape[0] == 16
        assert sum(1 for k in state if k.startswith("encoder.encoders.")) < sum(
            1 for k in model.state_dict() if k.startswith("encoder.encoders.")) or system.depth == 2
    for system in model.aio.system_list[1:]:   # every twin's start builds and loads (heads, units and blocks cut)
        f_conf, f_state = export_float(float_model, two_block_conf(), model.aio, system)
        load_state_strict(build_from_config(f_conf, "float cut"), f_state, "float cut")
    # the float model cut to the largest system's shape is the float model (units reordered)
    f_conf, f_state = export_float(float_model, two_block_conf(), model.aio, model.aio.largest)
    cut = build_from_config(f_conf, "float cut")
    load_state_strict(cut, f_state, "float cut")
    with torch.no_grad():
        assert torch.allclose(cut.eval().encode(speech, lengths)[0], float_model.eval().encode(speech, lengths)[0],
                              atol=1e-5)


def test_an_update_computes_the_shared_input_layer_once_a_bit_width_and_exactly_as_if_run_again():
    """The conv2d subsampling runs once per bit-width of an update (not once per system), and the update's loss
    and gradients are those of running it for every system (dropout on: the random state is carried over too);
    a narrow feed-forward computes only its units."""
    float_model = float_model_of()
    model, _ = build(float_state=float_model.state_dict())
    model.train()
    plan = [s.bits for s in seeded_plan(model.aio, model.aio_seed, 0)]
    conv_calls, widths = [], []
    model.encoder.embed.conv.register_forward_hook(lambda m, a, o: conv_calls.append(1))
    w_1 = next(iter(feed_forwards(model).values()))[0]
    w_1.register_forward_hook(lambda m, a, o: widths.append(o.shape[-1]))

    def update():
        model.aio_forwards.zero_()
        model.zero_grad()
        torch.manual_seed(5)
        loss = model(*batch())[0]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = update()
    assert len(conv_calls) == len(set(plan)) < len(plan)
    assert sorted(set(widths)) == [32, 64]            # the half-width systems ran 32 units, not 64 masked
    assert model.encoder.embed.shared is None and w_1.keep_out is None   # after the update: the largest, plainly
    shared, model._shared = model._shared, []         # the same update, the input layer run for every system
    conv_calls.clear()
    loss_again, grads_again = update()
    model._shared = shared
    assert len(conv_calls) == len(plan)
    assert torch.allclose(loss, loss_again, rtol=1e-6)
    assert grads.keys() == grads_again.keys()
    for n in grads:
        assert torch.allclose(grads[n], grads_again[n], rtol=1e-4, atol=1e-7), n


def test_the_step_benchmark_times_the_one_pass_against_every_twin(tmp_path):
    """benchmark_aio_step on a tiny base conf: the recipe's configs, one update of the nested model and a step of
    each system's twin, the ratio of their sum to the update, written to markdown and json."""
    import json

    import yaml

    from mpq_plugins.bin.benchmark_aio_step import main
    qc = tmp_path / "aio.yaml"
    qc.write_text(yaml.safe_dump({"method": "all_in_one", "quantization": {"weight_bits": 4},
                                  "all_in_one": {"depth": [1], "ff": [1, 0.5], "bits": [4, 2], "sampled": 1}}))
    out = tmp_path / "b.md"
    main(["--out", str(out), "--base", "tests/conf/train_tiny.yaml", "--finetune", "conf/finetune.yaml",
          "--quant_conf", str(qc), "--batch", "2", "--seconds", "1", "--repeats", "2"])
    res = json.loads((tmp_path / "b.json").read_text())
    assert set(res["step_s"]) == {"one pass (an update)", "d1_ff1_w4 twin", "d1_ff1_w2 twin", "d1_ff0p5_w4 twin",
                                  "d1_ff0p5_w2 twin"}
    assert all(len(v) == 2 and min(v) > 0 for v in res["step_s"].values())
    assert res["systems_per_update"] == 3 and res["ratio"] > 0
    assert f"the 4 twins cost {res['ratio']:.2f}x the one pass" in out.read_text()


def test_balance_largest_gives_every_system_the_largest_systems_loss_and_its_own_gradient_direction():
    """balance: largest: each other system's loss is scaled (a constant) to the largest's value, so the update
    minimises n_systems x the largest's loss in value, and a system's gradient is its own, rescaled."""
    stats = {}
    for balance in ("sum", "largest"):
        torch.manual_seed(0)
        model, conf = build({**AIO, "kl_weight": 0.0, "balance": balance})
        model.train()
        loss, st, _ = model(*batch())
        stats[balance] = {k: float(v) for k, v in st.items() if k.startswith("loss")}
        stats[balance]["total"] = float(loss.detach())
    s, b = stats["sum"], stats["largest"]
    assert s["total"] == pytest.approx(s["loss_largest"] + s["loss_smallest"] + s["loss_sampled1"], rel=1e-5)
    assert b["loss_smallest"] == pytest.approx(s["loss_smallest"], rel=1e-5)     # the same systems, the same losses
    assert b["total"] == pytest.approx(3 * b["loss_largest"], rel=1e-5) and b["total"] != pytest.approx(s["total"])
