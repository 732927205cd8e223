"""A transformers wav2vec2 / HuBERT model fine-tuned with CTC (Wav2Vec2ForCTC, HubertForCTC) imported as an
ESPnet model of ours: the same CTC log-posteriors (rows permuted to the ESPnet token list, blank first), the
token list ESPnet expects, the letters' case for the corpus, and one error per bad directory."""
import json
import os

import pytest
import torch

from mpq_plugins.espnet.imported import ImportModelError, import_model
from mpq_plugins.espnet.load import load_asr_model
from tests.fixtures import tiny_batch
from tests.test_ssl import TINY

# as facebook/wav2vec2-base-960h's vocab.json: padding (the blank) first, then <s>, </s>, <unk>, the word delimiter
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "'", "N"]


def write_ctc_model(root, kind="wav2vec2", vocab=VOCAB, weights="safetensors"):
    import transformers
    torch.manual_seed(0)
    conf = dict(TINY, vocab_size=len(vocab), pad_token_id=0)
    if kind == "wav2vec2":
        model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**conf))
    else:
        model = transformers.HubertForCTC(transformers.HubertConfig(**conf, feat_extract_norm="layer",
                                                                     do_stable_layer_norm=True))
    with torch.no_grad():   # a head that says something: its rows differ clearly
        model.lm_head.bias.copy_(torch.linspace(-2, 2, len(vocab)))
    path = os.path.join(str(root), kind)
    model.save_pretrained(path, safe_serialization=weights == "safetensors")
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"pad_token": "<pad>", "unk_token": "<unk>", "word_delimiter_token": "|"}, f)
    return path, model.eval()


@pytest.mark.parametrize("kind,weights", [("wav2vec2", "safetensors"), ("hubert", "bin")])
def test_a_ctc_model_is_imported_with_the_same_posteriors(tmp_path, kind, weights):
    src, hf = write_ctc_model(tmp_path, kind, weights=weights)
    r = import_model(src, str(tmp_path / "exp"))
    tokens = (tmp_path / "exp" / "tokens.txt").read_text().split()
    assert tokens == ["<blank>", "<s>", "</s>", "<unk>", "<space>", "E", "T", "A", "O", "'", "N", "<sos/eos>"]
    assert r["tokens"] == 12 and r["token_type"] == "char"
    model, conf = load_asr_model(tmp_path / "exp" / "config.yaml", tmp_path / "exp" / "valid.cer_ctc.best.pth")
    assert conf["encoder"] == "hf_ssl" and conf["model_conf"]["ctc_weight"] == 1.0 and model.decoder is None
    speech, lengths = tiny_batch()[:2]
    model.eval()
    with torch.no_grad():
        enc, enc_lens = model.encode(speech, lengths)
        ours = model.ctc.log_softmax(enc)
        mask = torch.arange(speech.size(1))[None] < lengths[:, None]
        x = speech * mask
        if model.encoder.normalize_waveform:
            pytest.fail("no preprocessor_config.json: the waveform is not normalized")
        theirs = hf(x, attention_mask=mask.long() if hf.config.feat_extract_norm == "layer" else None).logits
        theirs = theirs.log_softmax(-1)
    rows = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]          # <pad> is first already: the same order, <sos/eos> added
    for b, n in enumerate(enc_lens.tolist()):
        assert torch.allclose(ours[b, :n, :11], theirs[b, :n, rows], atol=1e-4)
        assert (ours[b, :n, 11] < ours[b, :n, :11].min(-1).values - 20).all()   # <sos/eos> never wins
    # importing again rewrites nothing
    before = {f: os.stat(tmp_path / "exp" / f).st_mtime_ns for f in os.listdir(tmp_path / "exp")}
    import_model(src, str(tmp_path / "exp"))
    assert {f: os.stat(tmp_path / "exp" / f).st_mtime_ns for f in os.listdir(tmp_path / "exp")} == before


def test_the_blank_goes_first_and_letters_take_the_corpus_case(tmp_path):
    vocab = ["A", "B", "|", "<unk>", "<pad>"]          # the blank last, as some models have it
    src, hf = write_ctc_model(tmp_path, vocab=vocab)
    with open(os.path.join(src, "config.json")) as f:
        conf = json.load(f)
    conf["pad_token_id"] = 4
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(conf, f)
    import_model(src, str(tmp_path / "exp"), token_case="lower")
    assert (tmp_path / "exp" / "tokens.txt").read_text().split() == ["<blank>", "a", "b", "<space>", "<unk>",
                                                                      "<sos/eos>"]
    model, _ = load_asr_model(tmp_path / "exp" / "config.yaml", tmp_path / "exp" / "valid.cer_ctc.best.pth")
    assert torch.equal(model.ctc.ctc_lo.bias[:5], hf.lm_head.bias[[4, 0, 1, 2, 3]])


@pytest.mark.parametrize("damage,message", [
    ("no_vocab", "vocab.json: no such file"),
    ("vocab_size", "ids are not 0..10 or differ from config.json's vocab_size"),
    ("case", "two tokens are 'e' in lower case"),
    ("no_head", "no lm_head.weight and lm_head.bias"),
    ("model_file", "no --model_file"),
    ("acc", "a CTC model has no attention accuracy"),
])
def test_a_bad_ctc_model_dir_is_one_error_naming_the_file(tmp_path, damage, message):
    vocab = VOCAB + ["e"] if damage == "case" else VOCAB
    src, hf = write_ctc_model(tmp_path, vocab=vocab)
    kwargs = {}
    if damage == "no_vocab":
        os.remove(os.path.join(src, "vocab.json"))
    elif damage == "vocab_size":
        with open(os.path.join(src, "vocab.json"), "w") as f:
            json.dump({t: i for i, t in enumerate(VOCAB[:-1])}, f)
        message = message.replace("0..10", "0..9")
    elif damage == "case":
        kwargs["token_case"] = "lower"
    elif damage == "no_head":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in hf.state_dict().items() if not k.startswith("lm_head")},
                  os.path.join(src, "model.safetensors"))
    elif damage == "model_file":
        kwargs["model_file"] = os.path.join(src, "model.safetensors")
    elif damage == "acc":
        kwargs["checkpoint_name"] = "valid.acc.best.pth"
    with pytest.raises(ImportModelError, match=message.replace(".", r"\.").replace("(", r"\(")) as e:
        import_model(src, str(tmp_path / "exp"), **kwargs)
    assert os.path.basename(src) in str(e.value)
    assert not (tmp_path / "exp").exists()


def test_token_case_is_for_transformers_models_only(tmp_path):
    with pytest.raises(ImportModelError, match="token_case is for a transformers CTC model"):
        import_model(str(tmp_path), str(tmp_path / "exp"), token_case="lower")
