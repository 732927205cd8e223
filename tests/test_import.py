"""Bringing a model trained elsewhere: an experiment dir or a model-zoo layout is found, checked (one error
naming the file for each problem, nothing written) and written as the recipe's own float model."""
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from mpq_plugins.espnet.imported import ImportModelError, import_model
from mpq_plugins.espnet.load import load_asr_model
from tests.fixtures import TINY_TOKENS, tiny_asr_conf

EBF = os.path.join(os.path.dirname(__file__), "conf", "train_tiny_ebf.yaml")


def zoo(tmp_path, config=None, tokens=TINY_TOKENS, mutate=None):
    """An unpacked model-zoo dir: exp/asr_x/{config.yaml, valid.acc.ave.pth}, data/token_list/char/tokens.txt and
    exp/asr_stats/train/feats_stats.npz, named in config.yaml relative to the zoo's root."""
    root = tmp_path / "zoo"
    (root / "exp" / "asr_x").mkdir(parents=True)
    (root / "data" / "token_list" / "char").mkdir(parents=True)
    (root / "exp" / "asr_stats" / "train").mkdir(parents=True)
    (root / "data" / "token_list" / "char" / "tokens.txt").write_text("".join(t + "\n" for t in tokens))
    stats = root / "exp" / "asr_stats" / "train" / "feats_stats.npz"
    np.savez(stats, count=np.array(100), sum=np.zeros(80), sum_square=np.ones(80) * 100)
    conf = tiny_asr_conf(config)
    conf.update(token_list="data/token_list/char/tokens.txt", normalize="global_mvn",
                normalize_conf={"stats_file": "exp/asr_stats/train/feats_stats.npz"})
    from mpq_plugins.espnet.load import build_from_config
    torch.manual_seed(0)
    state = build_from_config({**conf, "token_list": list(tokens), "normalize_conf": {"stats_file": str(stats)}},
                              "stock ESPnet model").state_dict()
    if mutate:
        conf, state = mutate(conf, state)
    (root / "exp" / "asr_x" / "config.yaml").write_text(yaml.safe_dump(conf))
    torch.save(state, root / "exp" / "asr_x" / "valid.acc.ave.pth")
    return root


def test_a_zoo_dir_is_imported_and_loads_strictly(tmp_path):
    root = zoo(tmp_path, EBF)
    out = tmp_path / "exp" / "asr_zoo"
    r = import_model(str(root), str(out))
    assert r["encoder"] == "E-Branchformer" and r["tokens"] == len(TINY_TOKENS)
    conf = yaml.safe_load((out / "config.yaml").read_text())
    assert conf["token_list"] == str(out / "tokens.txt") and conf["normalize_conf"]["stats_file"] == str(out / "feats_stats.npz")
    model, _ = load_asr_model(out / "config.yaml", out / "valid.acc.best.pth")
    assert type(model.encoder).__name__ == "EBranchformerEncoder"
    mtime = (out / "config.yaml").stat().st_mtime_ns
    import_model(str(root), str(out))                       # again: nothing changed, nothing rewritten
    assert (out / "config.yaml").stat().st_mtime_ns == mtime


def test_an_experiment_dir_with_the_checkpoint_named(tmp_path):
    root = zoo(tmp_path)
    exp = root / "exp" / "asr_x"
    shutil.move(str(exp / "valid.acc.ave.pth"), str(exp / "5epoch.pth"))
    with pytest.raises(ImportModelError, match="no checkpoint beside it"):
        import_model(str(exp), str(tmp_path / "out"))
    r = import_model(str(exp), str(tmp_path / "out"), str(exp / "5epoch.pth"))
    assert r["encoder"] == "Conformer"


@pytest.mark.parametrize("case,message", [
    ("no_config", "no config.yaml"),
    ("tokens", "4 tokens, but .* has"),
    ("encoder", "encoder 'rnn' is not supported"),
    ("quantized", "quantized already"),
    ("stats", "normalize_conf.stats_file exp/asr_stats/train/nothing.npz: no such file"),
    ("mismatch", "does not fit"),
])
def test_a_bad_model_dir_is_one_error_naming_the_file(tmp_path, case, message):
    if case == "no_config":
        (tmp_path / "empty").mkdir()
        root = tmp_path / "empty"
    elif case == "tokens":
        root = zoo(tmp_path)
        (root / "data" / "token_list" / "char" / "tokens.txt").write_text("<blank>\na\nb\n<sos/eos>\n")
    elif case == "encoder":
        root = zoo(tmp_path, mutate=lambda c, s: ({**c, "encoder": "rnn"}, s))
    elif case == "quantized":
        root = zoo(tmp_path, mutate=lambda c, s: ({**c, "quantization": {"weight_bits": 4}}, s))
    elif case == "stats":
        root = zoo(tmp_path, mutate=lambda c, s: ({**c, "normalize_conf": {"stats_file": "exp/asr_stats/train/nothing.npz"}}, s))
    else:
        root = zoo(tmp_path, mutate=lambda c, s: (c, {k: v for k, v in s.items() if "decoder" not in k}))
    out = tmp_path / "out"
    with pytest.raises(ImportModelError, match=message):
        import_model(str(root), str(out))
    assert not out.exists()                                  # nothing written
