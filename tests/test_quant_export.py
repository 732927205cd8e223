"""Packed files: bit-packing round trips for every bit-width, exact reconstruction of the
fake-quantized model, honest sizes, and one clear error for a damaged file."""
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpq_plugins.espnet.decoding import DECODE_OPTIONS, Recognizer
from mpq_plugins.espnet.groups import CONFORMER
from mpq_plugins.espnet.load import load_asr_model, load_packed, model_config, pack_asr_model
from mpq_plugins.quant import quantize_
from mpq_plugins.quant.packing import PackedFileError, decode, encode, pack_bits, unpack_bits
from mpq_plugins.quant.numerics import BITS, storage_bytes
from tests.fixtures import tiny_asr_conf, tiny_asr_model


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    n = data.draw(st.integers(0, 300))
    levels = np.array(data.draw(st.lists(st.integers(0, 2 ** bits - 1), min_size=n, max_size=n)), dtype=np.uint8)
    packed = pack_bits(levels, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(n * bits / 8)   # b bits a value, not a byte
    assert np.array_equal(unpack_bits(packed, bits, n), levels)


@settings(max_examples=200, deadline=None)
@given(bits=st.sampled_from(BITS), data=st.data())
def test_levels_encode_and_decode_at_their_stored_size(bits, data):
    n = data.draw(st.integers(0, 300))
    if bits == 1.6:
        allowed = [-1, 0, 1]
    elif bits <= 2:
        allowed = list(range(-(2 ** bits - 1), 2 ** bits, 2))      # the odd integers of the grids without zero
    else:
        allowed = list(range(-(2 ** (bits - 1) - 1), 2 ** (bits - 1)))
    levels = np.array(data.draw(st.lists(st.sampled_from(allowed), min_size=n, max_size=n)), dtype=np.int16)
    blob = encode(levels, bits)
    assert blob.size == storage_bytes(n, bits)
    assert blob.size == (math.ceil(n / 5) if bits == 1.6 else math.ceil(n * bits / 8))
    assert np.array_equal(decode(blob, bits, n), levels)


def test_ternary_packs_five_weights_to_a_byte():
    blob = encode(np.array([-1, 0, 1, 1, -1, 1], np.int16), 1.6)
    # codes 0 1 2 2 0 -> 0 + 1*3 + 2*9 + 2*27 + 0*81 = 75; then code 2 alone
    assert blob.tolist() == [75, 2]
    with pytest.raises(PackedFileError, match="above 242"):
        decode(np.array([250], np.uint8), 1.6, 5)


def test_unpack_rejects_wrong_length():
    with pytest.raises(PackedFileError, match="need 3 bytes"):
        unpack_bits(np.zeros(2, np.uint8), 3, 7)


def quantized_tiny(bits_map, act_bits=None):
    model = tiny_asr_model()
    quantize_(model, {"weight_bits": 4, "act_bits": act_bits, "bits": bits_map}, CONFORMER)
    model.eval()
    return model


def conf_of(model):
    return model_config(tiny_asr_conf())


def forward_all(model):
    torch.manual_seed(1)
    speech, lengths = torch.randn(2, 9000), torch.tensor([9000, 7000])
    with torch.no_grad():
        enc, enc_lens = model.encode(speech, lengths)
        ys = torch.tensor([[10, 3, 4], [10, 5, 6]])
        dec, _ = model.decoder(enc, enc_lens, ys, torch.tensor([3, 3]))
        return enc, model.ctc.log_softmax(enc), dec


@pytest.mark.parametrize("act_bits", [None, 8])
def test_packed_model_is_the_fake_quantized_model(tmp_path, act_bits):
    bits = {r"encoder\.embed\..*": 8, r".*feed_forward.*w_1": 3, r".*feed_forward.*w_2": 6, "ctc.ctc_lo": 2,
            r".*conv_module.*pointwise_conv1": 1, r".*conv_module.*pointwise_conv2": 1.6}
    model = quantized_tiny(bits, act_bits)
    forward_all(model)                                   # steps initialised (lazily) before packing
    conf = conf_of(model)
    conf["quantization"] = {"weight_bits": 4, "act_bits": act_bits, "bits": bits}
    report = pack_asr_model(model, conf, tmp_path / "m.safetensors")
    back, _ = load_packed(tmp_path / "m.safetensors")
    for a, b in zip(forward_all(model), forward_all(back)):
        assert torch.equal(a, b)
    assert report["disk_bytes"] == os.path.getsize(tmp_path / "m.safetensors")
    assert report["accounted_bytes"] <= report["disk_bytes"]
    assert report["compression_ratio"] > 1.5       # a tiny model: header and float tensors weigh a lot


def test_sizes_follow_the_bit_widths(tmp_path):
    sizes = {}
    for b in (1, 1.6, 2, 3, 4, 6, 8):
        model = tiny_asr_model()
        quantize_(model, {"weight_bits": b}, CONFORMER)
        forward_all(model)
        conf = conf_of(model)
        conf["quantization"] = {"weight_bits": b}
        sizes[b] = pack_asr_model(model, conf, tmp_path / f"w{b}.safetensors")
    nq = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight_quantizer"))
    for b in (1, 1.6, 2, 3, 4, 6):   # each extra bit a weight costs nq/8 bytes, give or take byte rounding per layer
        extra = sizes[8]["accounted_bytes"] - sizes[b]["accounted_bytes"]
        assert abs(extra - nq * (8 - b) / 8) < 60
        assert sizes[b]["avg_weight_bits"] == pytest.approx(b)


def test_damaged_files_are_one_clear_error(tmp_path):
    model = quantized_tiny({})
    forward_all(model)
    conf = conf_of(model)
    conf["quantization"] = {"weight_bits": 4}
    pack_asr_model(model, conf, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackedFileError, match="trunc.safetensors"):
        load_packed(tmp_path / "trunc.safetensors")
    # a header whose bit-widths do not match its tensors: claim 3 bits for the first layer, packed at 4
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    bits = meta["bits"].split(",")
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={**meta, "bits": ",".join(["3"] + bits[1:])})
    with pytest.raises(PackedFileError, match="header says 3 bits"):
        load_packed(tmp_path / "bad.safetensors")
    # a file of format 3 with 2-bit weights: those were ternary then, four levels now
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "old.safetensors"),
              metadata={**meta, "format": "mpq-asr packed 3", "bits": ",".join(["2"] + bits[1:])})
    with pytest.raises(PackedFileError, match="stored 2-bit weights as ternary"):
        load_packed(tmp_path / "old.safetensors")
    tensors = load_file(str(tmp_path / "m.safetensors"))
    tensors["float32"] = tensors["float32"][:-1]
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(PackedFileError, match="short.safetensors: damaged: its tensors do not match the checksum"):
        load_packed(tmp_path / "short.safetensors")
    altered = bytearray(data)                                   # one byte of a weight changed, same length
    altered[-5] ^= 0x10
    (tmp_path / "altered.safetensors").write_bytes(bytes(altered))
    with pytest.raises(PackedFileError, match="altered.safetensors: damaged"):
        load_packed(tmp_path / "altered.safetensors")
    # format 2 (before the checksum) still loads, and its size checks still hold
    old = {k: v for k, v in meta.items() if k != "sha256"}
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "v2.safetensors"),
              metadata={**old, "format": "mpq-asr packed 2"})
    assert forward_all(load_packed(tmp_path / "v2.safetensors")[0])[0].shape == forward_all(model)[0].shape
    save_file(tensors, str(tmp_path / "v2short.safetensors"), metadata={**old, "format": "mpq-asr packed 2"})
    with pytest.raises(PackedFileError, match="does not match its tensors"):
        load_packed(tmp_path / "v2short.safetensors")


def test_checkpoint_that_does_not_fit_its_config_is_rejected(tmp_path):
    import yaml
    model = quantized_tiny({})
    forward_all(model)
    torch.save(model.state_dict(), tmp_path / "q.pth")
    conf = conf_of(model)                                # no quantization section: the stock decoder's trap
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ValueError, match="tensors the config does not build"):
        load_asr_model(tmp_path / "config.yaml", tmp_path / "q.pth")
    conf["quantization"] = {"weight_bits": 4}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    back, _ = load_asr_model(tmp_path / "config.yaml", tmp_path / "q.pth")
    for a, b in zip(forward_all(model), forward_all(back)):
        assert torch.equal(a, b)


def test_packed_file_decodes_to_the_same_hypotheses(tmp_path):
    model = quantized_tiny({"ctc.ctc_lo": 3})
    forward_all(model)
    conf = conf_of(model)
    conf["quantization"] = {"weight_bits": 4, "bits": {"ctc.ctc_lo": 3}}
    pack_asr_model(model, conf, tmp_path / "m.safetensors")
    back, _ = load_packed(tmp_path / "m.safetensors")
    opts = {k: d for k, (_, d) in DECODE_OPTIONS.items()}
    opts.update(beam_size=3, maxlenratio=0.2)
    torch.manual_seed(3)
    for _ in range(3):
        wav = torch.randn(12000) * 0.1
        a = Recognizer(model, conf, opts).decode(wav)[0]
        b = Recognizer(back, conf, opts).decode(wav)[0]
        assert a[1] == b[1] and float(a[2].score) == float(b[2].score)


class NotATensor:
    pass


def test_checkpoints_load_with_weights_only(tmp_path):
    import yaml
    model = tiny_asr_model()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf_of(model)))
    torch.save({"model": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="cannot load checkpoint .*evil.pth"):
        load_asr_model(tmp_path / "config.yaml", tmp_path / "evil.pth")
