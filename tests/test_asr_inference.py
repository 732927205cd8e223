"""The decoding entry point's options: a yaml key it does not know is one clear error; int8 serving."""
import subprocess
import sys

import pytest

from mpq_plugins.espnet.decoding import read_decode_config


def test_defaults_and_types(tmp_path):
    (tmp_path / "d.yaml").write_text("beam_size: 4\nword_lm_weight: 0.7\n")
    opts = read_decode_config(tmp_path / "d.yaml")
    assert opts["beam_size"] == 4 and opts["word_lm_weight"] == 0.7 and opts["ctc_weight"] == 0.5


@pytest.mark.parametrize("text,message", [
    ("beam_size: 4\nbeem_size: 3\n", "unknown decoding option(s) beem_size"),
    ("beam_size: many\n", "beam_size: 'many' is not a int"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("nbest: 0\n", "nbest: 0 must be positive"),
    ("search: lexicon\nrescore_nbest: 0\n", "rescore_nbest: 0 must be positive"),
    ("search: viterbi\n", "search: 'viterbi' is not one of espnet, lexicon, ctc"),
    ("ctc_weight: 1.5\n", "ctc_weight: 1.5 is not within 0..1"),
    ("tune:\n  beam_size: [1, 2]\n", "tune: beam_size cannot be tuned"),
    ("tune:\n  ctc_weight: 0.3\n", "tune: ctc_weight: expected a list of numbers"),
    ("tune: [1]\n", "tune: [1] is not a dict"),
    ("serve: int4\n", "serve: 'int4' is not one of float, int8"),
    ("int8_engine: mkl\n", "int8_engine: 'mkl' is not one of auto, fbgemm, onednn"),
    ("int8_calibration_utts: 0\n", "int8_calibration_utts: 0 must be positive"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(ValueError, match="d.yaml") as e:
        read_decode_config(tmp_path / "d.yaml")
    assert message in str(e.value)


def test_cli_exits_non_zero_before_loading_anything(tmp_path):
    (tmp_path / "d.yaml").write_text("lm_weigth: 1\n")
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.asr_inference", "--data_path_and_name_and_type",
                        "x,speech,sound", "--asr_train_config", "c", "--asr_model_file", "m",
                        "--config", str(tmp_path / "d.yaml"), "--output_dir", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "lm_weigth" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_int8_serving_moves_the_quantized_layers_to_int8_kernels_and_decodes(tmp_path):
    import numpy as np
    import soundfile
    import torch

    from mpq_plugins.espnet.ctc_search import CTCRescoringRecognizer
    from mpq_plugins.espnet.decoding import serve_model
    from mpq_plugins.espnet.groups import CONFORMER
    from mpq_plugins.quant import quantize_
    from mpq_plugins.quant.layers import QLinear
    from mpq_plugins.quant.serve import StaticInt8ConvReLU
    from tests.fixtures import tiny_asr_conf, tiny_asr_model
    model = tiny_asr_model()
    quantize_(model, {"weight_bits": 8}, CONFORMER)
    model.eval()
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * 0.1).astype("float32") for n in (12000, 9000)]
    for i, w in enumerate(waves):
        soundfile.write(tmp_path / f"u{i}.wav", w, 16000)
    (tmp_path / "wav.scp").write_text("".join(f"u{i} {tmp_path / f'u{i}.wav'}\n" for i in range(2)))
    (tmp_path / "d.yaml").write_text(f"search: ctc\nserve: int8\nint8_calibration: {tmp_path / 'wav.scp'}\n"
                                     "int8_calibration_utts: 1\n")
    opts = read_decode_config(tmp_path / "d.yaml")
    with torch.no_grad():
        want = model.encode(torch.from_numpy(waves[1])[None], torch.tensor([9000]))[0]
    assert serve_model(model, dict(opts, serve="float")) == [] and any(isinstance(m, QLinear) for m in model.modules())
    names = serve_model(model, opts)
    assert "encoder.embed.conv" in names and isinstance(model.encoder.embed.conv, StaticInt8ConvReLU)
    assert not any(isinstance(m, QLinear) for m in model.modules())
    with torch.no_grad():
        got = model.encode(torch.from_numpy(waves[1])[None], torch.tensor([9000]))[0]
    assert float((got - want).norm() / want.norm()) < 0.05
    nbest = CTCRescoringRecognizer(model, tiny_asr_conf(), opts)(waves)
    assert len(nbest) == 2 and all(n and isinstance(n[0][0], str) for n in nbest)
    with pytest.raises(ValueError, match="int8_calibration: .*none.scp: cannot read"):
        serve_model(tiny_asr_model(), dict(opts, int8_calibration=str(tmp_path / "none.scp")))
    with pytest.raises(ValueError, match="serve: int8 runs on CPU kernels"):
        serve_model(tiny_asr_model(), opts, device="cuda")


def test_every_decoding_conf_of_the_recipes_reads():
    import glob
    import os

    from tests.conftest import ROOT
    confs = glob.glob(os.path.join(ROOT, "conf", "decode*.yaml")) + glob.glob(os.path.join(ROOT, "egs", "*", "conf",
                                                                                              "decode*.yaml"))
    assert len(confs) >= 4
    for c in confs:
        read_decode_config(c)
    assert read_decode_config(os.path.join(ROOT, "conf", "decode_asr_int8.yaml"))["serve"] == "int8"
