"""Models other than the recipe's own through run.sh, on the tiny corpus alone (tests/recipe.py: stages 1-2, so that
this file runs while the shared recipe builds): a model trained elsewhere, a foundation model fine-tuned with CTC."""
import json
import os

import yaml

from tests.conftest import ROOT
from tests.recipe import DECODE, corpus, pytestmark, run  # noqa: F401


def assert_packed_with_encoder(exp, encoder, header_slack):
    """A system of this encoder, packed: its file's size is the accounting's plus the header (under 1% + slack)."""
    assert yaml.safe_load((exp / "config.yaml").read_text())["encoder"] == encoder
    size = json.loads((exp / "packed.size.json").read_text())
    assert size["disk_bytes"] == (exp / "packed.safetensors").stat().st_size
    assert size["disk_bytes"] - size["accounted_bytes"] == size["header_bytes"] < 0.01 * size["disk_bytes"] + header_slack


def test_a_model_trained_elsewhere_is_imported_and_compressed(corpus, tmp_path):
    """A stock ESPnet E-Branchformer in a model-zoo layout (paths relative to the zoo's root) goes through
    stages 2-6: imported (its config, tokens and statistics), its lengths measured with its own config,
    fine-tuned with w4 and packed at the accounted size."""
    from tests.test_import import zoo
    tokens = (corpus / "data" / "token_list" / "char" / "tokens.txt").read_text().split()
    root = zoo(tmp_path, os.path.join(ROOT, "tests", "conf", "train_tiny_ebf.yaml"), tokens=tokens)
    r = run(corpus, "--asr_model_dir", str(root), "--asr_tag", "zoo_ebf", "--stage", "2", "--stop_stage", "6",
            "--quant_confs", f"{ROOT}/conf/quant/w4.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train: nothing, exp/asr_zoo_ebf is imported" in r.stdout
    for system in ("asr_zoo_ebf", "asr_zoo_ebf_w4"):
        assert_packed_with_encoder(corpus / "exp" / system, "e_branchformer", header_slack=4096)
    assert json.loads((corpus / "exp" / "asr_zoo_ebf_w4" / "packed.size.json").read_text())["avg_weight_bits"] == 4
    assert (corpus / "exp" / "asr_stats_zoo_ebf" / "train" / "speech_shape").exists()


def test_a_foundation_model_is_fine_tuned_with_ctc_and_compressed(corpus, tmp_path):
    """A tiny random wav2vec2 written with transformers' save_pretrained, read by path: statistics and CTC
    fine-tuning through the recipe (stages 3-5, an exp dir of its own), w4 (stage 6; the other methods on
    these models: tests/test_ssl.py), packed at the accounted size, decoded with the lexicon search and
    scored (7-8)."""
    from tests.test_ssl import write_tiny_model
    with open(os.path.join(ROOT, "tests", "conf", "train_tiny.yaml")) as f:
        conf = yaml.safe_load(f)
    for k in ("encoder_conf", "decoder", "decoder_conf", "frontend_conf"):
        conf.pop(k)
    conf.update(encoder="hf_ssl", encoder_conf={"model_dir": write_tiny_model(tmp_path, "wav2vec2"),
                                                "overrides": {"mask_time_prob": 0.0}},
                input_size=1, normalize=None, model_conf={"ctc_weight": 1.0},
                best_model_criterion=[["valid", "cer_ctc", "min"]], max_epoch=1, keep_nbest_models=1)
    with open(tmp_path / "train_tiny_w2v.yaml", "w") as f:
        yaml.safe_dump(conf, f)
    r = run(corpus, "--asr_config", str(tmp_path / "train_tiny_w2v.yaml"), "--expdir", "exp_ssl", "--stage", "3",
            "--stop_stage", "8", "--inference_model", "valid.cer_ctc.best.pth", "--test_sets", "test",
            "--quant_test_sets", "test", "--acoustic_config", "",
            "--quant_confs", f"{ROOT}/conf/quant/w4.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for system in ("asr_train_tiny_w2v", "asr_train_tiny_w2v_w4"):
        exp = corpus / "exp_ssl" / system
        assert_packed_with_encoder(exp, "hf_ssl", header_slack=8192)
        assert (exp / DECODE / "test" / "score_wer" / "result.txt").exists()
    assert json.loads((corpus / "exp_ssl" / "asr_train_tiny_w2v_w4" / "packed.size.json").read_text())["avg_weight_bits"] == 4


def test_a_transformers_ctc_model_is_imported_compressed_and_decoded(corpus, tmp_path):
    """A tiny Wav2Vec2ForCTC in transformers' format (upper-case letters, as most English CTC models) through
    stages 2-8: converted (its letters in the corpus's lower case, the checkpoint chosen by CER), its lengths
    measured, nothing trained, w4 fine-tuned from it and packed, both decoded and scored."""
    from tests.test_hf_ctc import write_ctc_model
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|"] + [chr(ord("A") + i) for i in range(26)] + ["'"]
    src, _ = write_ctc_model(tmp_path, vocab=vocab)
    r = run(corpus, "--asr_model_dir", src, "--asr_token_case", "lower", "--asr_tag", "hf_ctc", "--stage", "2",
            "--stop_stage", "8", "--inference_model", "valid.cer_ctc.best.pth", "--test_sets", "test",
            "--quant_test_sets", "test", "--acoustic_config", "", "--quant_confs", f"{ROOT}/conf/quant/w4.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train: nothing, exp/asr_hf_ctc is imported" in r.stdout
    tokens = (corpus / "exp" / "asr_hf_ctc" / "tokens.txt").read_text().split()
    assert tokens[:5] == ["<blank>", "<s>", "</s>", "<unk>", "<space>"] and "a" in tokens and "A" not in tokens
    for system in ("asr_hf_ctc", "asr_hf_ctc_w4"):
        exp = corpus / "exp" / system
        assert_packed_with_encoder(exp, "hf_ssl", header_slack=8192)
        assert (exp / DECODE / "test" / "score_wer" / "result.txt").exists()
