"""Speech foundation models (mpq_plugins.espnet.ssl): tiny random wav2vec2 and HuBERT models written with
transformers' save_pretrained to a temporary directory, loaded by path as ESPnet's encoder, fine-tuned
with CTC, quantized (uniform and one-stage mixed precision), packed at their accounted size and served
from the packed file alone."""
import argparse
import os
import shutil

import pytest
import torch

from mpq_plugins.espnet.groups import groups_for
from mpq_plugins.espnet.load import build_from_config, load_packed, model_config, pack_asr_model
from mpq_plugins.espnet.ssl import SSLModelError, conv_output_lengths
from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.quant import quantized_modules, with_fixed_bits
from mpq_plugins.quant.config import plan
from mpq_plugins.quant.mixed import finalize
from tests.fixtures import tiny_asr_conf, tiny_batch, train_updates

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[16, 16, 16],
            conv_stride=[5, 4, 2], conv_kernel=[10, 8, 4], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
            vocab_size=11)


def write_tiny_model(root, kind):
    """A random-initialized tiny wav2vec2 (group-normed CNN, as wav2vec2-base) or HuBERT (layer-normed CNN and
    stable layer norm, as HuBERT-large) in transformers' format; returns its directory."""
    import transformers
    torch.manual_seed(0)
    if kind == "wav2vec2":
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**TINY))
    else:
        model = transformers.HubertModel(transformers.HubertConfig(**TINY, feat_extract_norm="layer",
                                                                   do_stable_layer_norm=True))
    path = os.path.join(str(root), kind)
    model.save_pretrained(path)
    if kind == "hubert":   # as HuBERT-large: the waveform is normalized per utterance
        with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
            f.write('{"do_normalize": true, "sampling_rate": 16000}')
    return path


def ssl_conf(model_dir, **encoder_conf):
    conf = tiny_asr_conf()
    conf.update(input_size=1, frontend=None, frontend_conf={}, normalize=None, normalize_conf={}, specaug=None,
                specaug_conf={}, encoder="hf_ssl", encoder_conf={"model_dir": model_dir, **encoder_conf},
                decoder=None, decoder_conf={}, model_conf={"ctc_weight": 1.0})
    return conf


def build(conf):
    return QuantASRTask.build_model(argparse.Namespace(**conf))


@pytest.fixture(scope="module", params=["wav2vec2", "hubert"])
def model_dir(request, tmp_path_factory):
    """Each kind in turn: for what differs between them (CNN norm, attention mask, layer norm order)."""
    return write_tiny_model(tmp_path_factory.mktemp("ssl"), request.param)


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory):
    """The wav2vec2 alone: for what the kinds share (the same module names and code paths)."""
    return write_tiny_model(tmp_path_factory.mktemp("w2v"), "wav2vec2")


def test_the_encoder_is_the_pretrained_model_with_frame_lengths(model_dir):
    import transformers
    model = build(ssl_conf(model_dir)).eval()
    ref = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    speech, lengths = tiny_batch()[:2]
    with torch.no_grad():
        out, olens, _ = model.encoder(speech, lengths)
        mask = (torch.arange(speech.size(1))[None] < lengths[:, None])
        x = speech * mask
        assert model.encoder.normalize_waveform == model_dir.endswith("hubert")
        if model.encoder.normalize_waveform:   # by hand: zero mean, unit variance over each utterance's own samples
            x = torch.stack([torch.cat([(u[:n] - u[:n].mean()) / torch.sqrt(u[:n].var(unbiased=False) + 1e-7),
                                        torch.zeros(len(u) - n)]) for u, n in zip(speech, lengths.tolist())])
        hf = ref(x, attention_mask=mask.long() if ref.config.feat_extract_norm == "layer" else None)
    assert torch.allclose(out, hf.last_hidden_state, atol=1e-5)
    assert olens.tolist() == ref._get_feat_extract_output_lengths(lengths).tolist()
    assert olens.tolist() == [198, 158]   # frames, not samples: ((8000 - 10) // 5 + 1 - 8) // 4 + 1 - 4) // 2 + 1
    assert conv_output_lengths(torch.tensor([400]), [10, 8, 4], [5, 4, 2]).tolist() == [8]   # 79, 18, 8
    # the weight norm is folded: one plain weight, the same function
    assert not hasattr(model.encoder.model.encoder.pos_conv_embed.conv, "parametrizations")


def test_every_weight_layer_is_in_a_group_and_the_cnn_is_frozen(model_dir):
    model = build(ssl_conf(model_dir))
    covered = set(plan(model, argparse.Namespace(modules=["all"], weight_bits=4, bits={}), groups_for(model)))
    layers = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}
    assert layers - covered == set() and "ctc.ctc_lo" in covered
    assert not any(p.requires_grad for p in model.encoder.model.feature_extractor.parameters())
    assert build(ssl_conf(model_dir, freeze_feature_encoder=False)).encoder.model.feature_extractor.conv_layers[0] \
        .conv.weight.requires_grad


def test_freeze_steps_trains_the_head_alone_first(w2v_dir):
    conf = ssl_conf(w2v_dir, freeze_steps=2, overrides={"layerdrop": 0.0, "mask_time_prob": 0.0})
    model = build(conf)
    enc0 = {k: v.clone() for k, v in model.encoder.model.state_dict().items()}
    head0 = model.ctc.ctc_lo.weight.detach().clone()
    train_updates(model, conf, 2)
    assert all(torch.equal(v, model.encoder.model.state_dict()[k]) for k, v in enc0.items())
    assert not torch.equal(head0, model.ctc.ctc_lo.weight)
    train_updates(model, conf, 1)
    after = model.encoder.model.state_dict()
    assert not torch.equal(enc0["encoder.layers.0.attention.q_proj.weight"], after["encoder.layers.0.attention.q_proj.weight"])


ONE_STAGE = {"weight_bits": 4, "mixed_precision": {"candidates": [1, 2, 4, 8], "budget": {"ratio": 4.0},
                                                   "search_steps": 1}}


@pytest.mark.parametrize("quant", [{"weight_bits": 8}, {"weight_bits": 4}, ONE_STAGE], ids=["w8", "w4", "one_stage"])
def test_quantized_foundation_models_pack_at_their_size_and_serve_without_their_directory(model_dir, quant, tmp_path):
    conf = ssl_conf(model_dir, overrides={"mask_time_prob": 0.0})
    mixed = "mixed_precision" in quant
    conf.update(quantization=quant, model="mpq_espnet" if mixed else "espnet", teacher_kl_weight=0.0)
    model = build(conf)
    stats = train_updates(model, conf, 2)
    assert torch.isfinite(stats["loss"])
    if mixed:
        bits = finalize(model)
        conf["quantization"], conf["model"] = with_fixed_bits(quant, bits), "espnet"
        plain = build_from_config(conf, "test")
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mpq_")})
        model = plain
    model.eval()
    report = pack_asr_model(model, model_config(conf), tmp_path / "m.safetensors")
    assert abs(report["disk_bytes"] - report["accounted_bytes"]) / report["disk_bytes"] < 0.01 + 4096 / report["disk_bytes"]
    assert len(quantized_modules(model)) == 18   # 3 CNN, projection, positional conv, 2 layers x 6, CTC
    moved = str(tmp_path / "elsewhere")
    shutil.move(model_dir, moved)   # a packed model is served with no model directory
    try:
        back, _ = load_packed(tmp_path / "m.safetensors")
    finally:
        shutil.move(moved, model_dir)
    with torch.no_grad():
        assert torch.equal(back.encode(*tiny_batch()[:2])[0], model.encode(*tiny_batch()[:2])[0])


def test_a_ctc_model_decodes_with_espnets_beam_search(w2v_dir):
    """(The fast CTC search decodes one in tests/test_recipe_systems.py.)"""
    from mpq_plugins.espnet.decoding import Recognizer
    conf = ssl_conf(w2v_dir)
    model = build(conf).eval()
    rec = Recognizer(model, conf, {"beam_size": 2, "ctc_weight": 0.3, "lm_weight": 0.0, "penalty": 0.0, "nbest": 1,
                                   "maxlenratio": 0.0, "minlenratio": 0.0, "normalize_length": False})
    (best,) = rec([tiny_batch()[0][0].numpy()])
    assert len(best) == 1 and isinstance(best[0][0], str)


@pytest.mark.parametrize("problem", ["no_dir", "no_config", "bert", "no_weights", "override", "input_size"])
def test_a_bad_model_directory_is_one_clear_error(w2v_dir, problem, tmp_path):
    d = str(tmp_path / "m")
    shutil.copytree(w2v_dir, d)
    conf = ssl_conf(d)
    expect = {"no_dir": "no such directory", "no_config": "config.json: no such file", "bert": "model_type 'bert'",
              "no_weights": "no model.safetensors", "override": "not options", "input_size": "input_size: 1"}[problem]
    if problem == "no_dir":
        conf["encoder_conf"]["model_dir"] = d + "_missing"
    elif problem == "no_config":
        os.remove(os.path.join(d, "config.json"))
    elif problem == "bert":
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write('{"model_type": "bert"}')
    elif problem == "no_weights":
        os.remove(os.path.join(d, "model.safetensors"))
    elif problem == "override":
        conf["encoder_conf"]["overrides"] = {"layer_drop": 0.1}
    else:
        conf["input_size"] = 80
    with pytest.raises(SSLModelError, match=expect):
        build(conf)


def test_all_in_one_nests_foundation_model_systems_that_export_exactly(w2v_dir, tmp_path):
    """Nested depth x width x bits over a foundation model's layers (transformers' names), a step over several
    systems, and each exported system (its config sized through transformers' options, no pretrained
    directory needed) computes what the nested model computes in it."""
    from mpq_plugins.espnet.checkpoint import load_state_strict
    from mpq_plugins.espnet.nested import AllInOneESPnetModel, export_float, export_system
    conf = ssl_conf(w2v_dir, overrides={"mask_time_prob": 0.0})
    float_model = build(conf)
    conf.update(model="mpq_all_in_one", quantization={"weight_bits": 8}, teacher_kl_weight=0.0,
                all_in_one={"depth": [2, 1], "ff": [1, 0.5], "bits": [8, 4], "sampled": 1})
    model = build(conf)
    model.load_state_dict(float_model.state_dict(), strict=False)
    assert isinstance(model, AllInOneESPnetModel)
    stats = train_updates(model, conf, 2)
    assert {"loss_largest", "loss_smallest", "loss_sampled1"} <= set(stats)
    model.eval()
    speech, lengths = tiny_batch()[:2]
    for system in model.aio.system_list:
        sys_conf, state = export_system(model, conf, system)
        assert sys_conf["encoder_conf"]["overrides"]["num_hidden_layers"] == system.depth
        plain = build_from_config(sys_conf, "exported")
        load_state_strict(plain, state, "exported")
        model.set_system(system)
        with torch.no_grad():
            assert torch.allclose(plain.eval().encode(speech, lengths)[0], model.encode(speech, lengths)[0],
                                  atol=1e-5), system.name
    small = model.aio.system_list[-1]
    f_conf, f_state = export_float(float_model, ssl_conf(w2v_dir, overrides={"mask_time_prob": 0.0}), model.aio, small)
    twin = build_from_config(f_conf, "twin")
    load_state_strict(twin, f_state, "twin")
    assert twin.encoder.model.config.intermediate_size == 32 and len(twin.encoder.model.encoder.layers) == 1
    from mpq_plugins.quant import QuantConfigError
    with pytest.raises(QuantConfigError, match="heads 0.5: this encoder's attention heads cannot be narrowed"):
        build({**conf, "all_in_one": {"heads": [1, 0.5]}})


def test_two_stage_sensitivities_and_post_training_quantization_run_on_a_ctc_foundation_model(w2v_dir, tmp_path):
    import yaml

    from mpq_plugins.espnet.ptq import quantize_float_model
    from mpq_plugins.espnet.sensitivity import espnet_hessian_sensitivity, posteriors
    from mpq_plugins.quant.sensitivity import kl_sensitivity
    conf = ssl_conf(w2v_dir, overrides={"mask_time_prob": 0.0})
    model = build(conf).eval()
    names = ["encoder.model.encoder.layers.0.feed_forward.intermediate_dense",
             "encoder.model.encoder.pos_conv_embed.conv", "ctc.ctc_lo"]
    for s in (kl_sensitivity(model, [tiny_batch()], names, [2, 8], posteriors),
              espnet_hessian_sensitivity(model, [tiny_batch()], names, [2, 8], n_samples=2)):
        assert set(s) == set(names) and sum(s[n][2] for n in names) > sum(s[n][8] for n in names) >= 0
    torch.save(model.state_dict(), tmp_path / "fp32.pth")
    with open(tmp_path / "config.yaml", "w") as f:
        yaml.safe_dump(conf, f)
    ptq, _ = quantize_float_model(str(tmp_path / "config.yaml"), str(tmp_path / "fp32.pth"), {"weight_bits": 8})
    with torch.no_grad():
        a, b = ptq.eval().encode(*tiny_batch()[:2])[0], model.encode(*tiny_batch()[:2])[0]
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.2 * float(b.abs().max()))


def test_the_fine_tuning_step_benchmark_times_float_and_quantized_steps(tmp_path):
    import json

    from mpq_plugins.bin.benchmark_ssl_step import main
    main(["--out", str(tmp_path / "b.md"), "--arch", "tiny", "--repeats", "1", "--seconds", "0.5", "--device", "cpu"])
    res = json.loads((tmp_path / "b.json").read_text())
    assert len(res["step_s"]) == 4 and all(v > 0 for v in res["step_s"].values())
    assert "|w4 (weight-only QAT)|" in (tmp_path / "b.md").read_text()
