"""The decoding entry point's options: a yaml key it does not know is one clear error."""
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
