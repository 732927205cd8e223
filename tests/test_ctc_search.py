"""The fast decoder (mpq_plugins.espnet.ctc_search): the C++ CTC search over a lexicon with a KenLM word LM, or
over tokens, then attention rescoring; its bad input; the weights tuned on dev."""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from mpq_plugins.espnet.ctc_search import CTCRescoringRecognizer, LexiconError, combine, tune
from mpq_plugins.espnet.decoding import DECODE_OPTIONS
from mpq_plugins.espnet.wordlm import NgramLM
from tests.fixtures import tiny_asr_conf, tiny_asr_model

WORDS = ["abc", "bad", "cab", "dead", "fed", "gag"]   # spelt with the tiny model's letters a..g


def options(**kw):
    opts = {k: d for k, (_, d) in DECODE_OPTIONS.items()}
    opts.update({"search": "lexicon", "beam_size": 8, "rescore_nbest": 5, **kw})
    return opts


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tiny_asr_model().eval()
    with torch.no_grad():   # a CTC output that favours letters, so that the search has words to find
        m.ctc.ctc_lo.bias[3:10] += 2.0
    return m


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    lm = NgramLM.train([["abc", "bad"], ["cab", "fed", "dead"], ["gag", "abc"], ["bad", "cab"]], WORDS, 3)
    lm.write_arpa(d / "lm.arpa")
    (d / "words.txt").write_text("\n".join(WORDS) + "\n")
    return lm, str(d / "words.txt"), str(d / "lm.arpa")


def waves(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16000 + 4000 * i, generator=g) * 0.1 for i in range(n)]


def test_lexicon_search_outputs_only_lexicon_words_and_the_best_rescored(model, lm_files):
    lm, lexicon, arpa = lm_files
    rec = CTCRescoringRecognizer(model, tiny_asr_conf(), options(nbest=5), lexicon, arpa)
    out = rec(waves())
    assert len(out) == 3 and all(out)
    for nbest in out:
        assert all(w in WORDS for text, _, _ in nbest for w in text.split())
        scores = [s for _, _, s in nbest]
        assert scores == sorted(scores, reverse=True)             # best first, by the combined score
    assert any(text for nbest in out for text, _, _ in nbest)       # words were found


def test_rescoring_scores_are_exact_ctc_attention_and_lm_log_likelihoods(model, lm_files):
    lm, lexicon, arpa = lm_files
    rec = CTCRescoringRecognizer(model, tiny_asr_conf(), options(), lexicon, arpa)
    enc, lens, logp = rec.encode(waves(2))
    cands = [(0, ("abc", "bad")), (0, ()), (1, ("gag",)), (1, ("fed", "dead", "cab")),
             (0, ("dead",) * 30)]                                   # more letters than frames: impossible
    comp = rec.components(enc, lens, logp, cands)
    for i, (b, words) in enumerate(cands):
        y = torch.tensor(rec.converter.tokens2ids(rec.tokenizer.text2tokens(" ".join(words))), dtype=torch.long)
        ctc = -F.ctc_loss(logp[b:b + 1, : lens[b]].transpose(0, 1), y[None], lens[b:b + 1], torch.tensor([len(y)]),
                          reduction="sum")
        if math.isinf(float(ctc)):
            assert float(comp["ctc"][i]) <= -1e9
            continue
        assert float(comp["ctc"][i]) == pytest.approx(float(ctc), rel=1e-4, abs=1e-3)
        ys_in = torch.cat([torch.tensor([model.sos]), y])[None]
        with torch.no_grad():
            dec, _ = model.decoder(enc[b:b + 1, : lens[b]], lens[b:b + 1], ys_in, torch.tensor([len(y) + 1]))
        att = torch.log_softmax(dec, -1)[0].gather(-1, torch.cat([y, torch.tensor([model.eos])])[:, None]).sum()
        assert float(comp["att"][i]) == pytest.approx(float(att), rel=1e-4, abs=1e-3)
        assert float(comp["lm"][i]) == pytest.approx(lm.sentence_logprob(list(words)), abs=1e-4)   # KenLM = ours
        assert float(comp["words"][i]) == len(words)
    total = combine(comp, options(ctc_weight=0.3, word_lm_weight=0.8, word_score=-1.0))
    want = 0.7 * comp["att"] + 0.3 * comp["ctc"] + 0.8 * comp["lm"] - comp["words"]
    assert torch.allclose(total, want) and int(total.argmin()) == 4
    acoustic = combine(comp, options(search="ctc", ctc_weight=0.3, word_lm_weight=0.8, word_score=-1.0))
    assert torch.allclose(acoustic, 0.7 * comp["att"] + 0.3 * comp["ctc"])   # no LM, no word score


def test_acoustic_search_needs_no_lexicon_and_spells_freely(model):
    rec = CTCRescoringRecognizer(model, tiny_asr_conf(), options(search="ctc", nbest=3))
    out = rec(waves())
    assert len(out) == 3
    letters = set("abcdefg ")
    assert all(set(text) <= letters for nbest in out for text, _, _ in nbest)


def test_a_batch_decodes_each_utterance_as_alone(model, lm_files):
    """The same words; scores close but not equal: ESPnet's Conformer convolutions and the frontend see the
    padding of the batch near an utterance's end (as in ESPnet's own batched decoding)."""
    _, lexicon, arpa = lm_files
    rec = CTCRescoringRecognizer(model, tiny_asr_conf(), options(), lexicon, arpa)
    ws = waves(3)
    together = rec(ws)
    for w, nbest in zip(ws, together):
        alone = rec([w])[0]
        assert alone[0][0] == nbest[0][0] and alone[0][2] == pytest.approx(nbest[0][2], rel=0.1)


@pytest.mark.parametrize("bad,message", [
    ("letter", "words.txt:2: word 'haze' has 'h', which is not in the model's token list"),
    ("lexicon_only", "are not in the ARPA file"),
    ("arpa_only", "are not in the lexicon"),
    ("twice", "words.txt:3: word 'abc' is listed twice"),
    ("not_arpa", "not an ARPA file"),
])
def test_a_lexicon_that_does_not_fit_is_one_clear_error(model, lm_files, tmp_path, bad, message):
    lm, _, arpa = lm_files
    words = list(WORDS)
    if bad == "letter":
        words.insert(1, "haze")
        NgramLM.train([["abc"]], words, 2).write_arpa(tmp_path / "lm.arpa")
        arpa = str(tmp_path / "lm.arpa")
    elif bad == "lexicon_only":
        words.append("ace")
    elif bad == "arpa_only":
        words.remove("fed")
    elif bad == "twice":
        words.insert(2, "abc")
    elif bad == "not_arpa":
        (tmp_path / "lm.arpa").write_text("hello\n")
        arpa = str(tmp_path / "lm.arpa")
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    with pytest.raises(LexiconError) as e:
        CTCRescoringRecognizer(model, tiny_asr_conf(), options(), str(tmp_path / "words.txt"), arpa)
    assert message in str(e.value)


def test_lexicon_search_without_its_files_is_an_error(model):
    with pytest.raises(ValueError, match="needs a lexicon and an ARPA word LM"):
        CTCRescoringRecognizer(model, tiny_asr_conf(), options())


def test_tuning_tries_every_grid_point_and_keeps_the_fewest_errors(model, lm_files):
    _, lexicon, arpa = lm_files
    rec = CTCRescoringRecognizer(model, tiny_asr_conf(), options(), lexicon, arpa)
    ws = waves(3)
    refs = {"u0": ["abc", "bad"], "u1": ["fed"], "u2": ["gag", "cab"]}
    grid = {"word_lm_weight": [0.0, 2.0], "word_score": [-1.0, 1.0], "ctc_weight": [0.0, 0.5, 1.0]}
    rows, best = tune(rec, [(["u0", "u1"], ws[:2]), (["u2"], ws[2:])], refs, grid, log=lambda *_: None)
    assert len(rows) == 12 and {tuple(v.values()) for v, _, _ in rows} == {
        (a, b, c) for a in grid["word_lm_weight"] for b in grid["word_score"] for c in grid["ctc_weight"]}
    assert all(n == 5 for _, _, n in rows)
    fewest = min(e for _, e, _ in rows)
    assert best == next(v for v, e, _ in rows if e == fewest)


def test_tune_decoding_writes_the_chosen_weights_and_leaves_an_unchanged_result_alone(tmp_path):
    """The entry point on a real data dir: the tuned yaml has the grid's best and no tune:, the table every
    point; a rerun with the same outcome does not touch the yaml (decodes made with it stay up to date); a rerun
    with the same inputs (by content, whatever their files' times) tunes nothing, other inputs tune again."""
    import os

    import numpy as np
    import soundfile
    from mpq_plugins.espnet.load import pack_asr_model
    model = tiny_asr_model()
    conf = tiny_asr_conf()
    pack_asr_model(model, conf, str(tmp_path / "m.safetensors"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({k: conf[k] for k in ("token_list", "token_type")}))
    data = tmp_path / "dev"
    data.mkdir()
    rng = np.random.default_rng(0)
    with open(data / "wav.scp", "w") as scp, open(data / "text", "w") as text:
        for i, words in enumerate(["abc bad", "fed", "gag cab"]):
            soundfile.write(tmp_path / f"u{i}.wav", (rng.standard_normal(8000) * 0.1).astype(np.float32), 16000)
            scp.write(f"u{i} {tmp_path / f'u{i}.wav'}\n")
            text.write(f"u{i} {words}\n")
    lm = NgramLM.train([["abc", "bad"], ["fed"]], WORDS, 2)
    lm.write_arpa(tmp_path / "lm.arpa")
    (tmp_path / "words.txt").write_text("\n".join(WORDS) + "\n")
    (tmp_path / "d.yaml").write_text("search: lexicon\nbeam_size: 4\nrescore_nbest: 3\n"
                                     "tune:\n  word_lm_weight: [0.5, 1.0]\n  ctc_weight: [0.3, 0.7]\n")
    cmd = [sys.executable, "-m", "mpq_plugins.bin.tune_decoding", "--config", str(tmp_path / "d.yaml"),
           "--data", str(data), "--asr_train_config", str(tmp_path / "config.yaml"),
           "--asr_model_file", str(tmp_path / "m.safetensors"), "--arpa_file", str(tmp_path / "lm.arpa"),
           "--lexicon_file", str(tmp_path / "words.txt"), "--out", str(tmp_path / "out" / "tuned.yaml")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    tuned = yaml.safe_load((tmp_path / "out" / "tuned.yaml").read_text())
    assert "tune" not in tuned and tuned["word_lm_weight"] in (0.5, 1.0) and tuned["ctc_weight"] in (0.3, 0.7)
    table = (tmp_path / "out" / "tuned.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["word_lm_weight", "word_score", "ctc_weight", "errors", "words"]
    assert len(table) == 5 and all(line.split("\t")[4] == "5" for line in table[1:])
    before = os.stat(tmp_path / "out" / "tuned.yaml").st_mtime_ns
    (tmp_path / "out" / "tuned.inputs").unlink()                       # as before there was a digest: tunes again
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "up to date" not in r.stdout and (tmp_path / "out" / "tuned.inputs").exists()
    assert os.stat(tmp_path / "out" / "tuned.yaml").st_mtime_ns == before    # the same weights: not rewritten
    # the same options in new bytes (a comment, another order) and a newer file: nothing tuned again
    (tmp_path / "d.yaml").write_text("# checked out again\nrescore_nbest: 3\nsearch: lexicon\nbeam_size: 4\n"
                                     "tune:\n  ctc_weight: [0.3, 0.7]\n  word_lm_weight: [0.5, 1.0]\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "tuned.yaml is up to date" in r.stdout, r.stdout + r.stderr[-2000:]
    # another grid, or another model, tunes again
    (tmp_path / "d.yaml").write_text("search: lexicon\nbeam_size: 4\nrescore_nbest: 3\ntune:\n  ctc_weight: [0.5]\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "up to date" not in r.stdout
    assert yaml.safe_load((tmp_path / "out" / "tuned.yaml").read_text())["ctc_weight"] == 0.5
    assert subprocess.run(cmd, capture_output=True, text=True).stdout.count("up to date") == 1
    with open(tmp_path / "config.yaml", "a") as f:      # the model's config: bytes of its own
        f.write("# edited\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "up to date" not in r.stdout


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A tiny ESPnet model over sentencepiece pieces (no <space> token), and its config."""
    import argparse

    import sentencepiece as spm
    from espnet2.tasks.asr import ASRTask
    d = tmp_path_factory.mktemp("bpe")
    (d / "text.txt").write_text("\n".join([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20) + "\n")
    spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "bpe"), vocab_size=14,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "bpe.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_unknown(i) or sp.is_control(i))]
    conf = tiny_asr_conf()
    conf.update(token_list=["<blank>", "<unk>"] + pieces + ["<sos/eos>"], token_type="bpe", bpemodel=str(d / "bpe.model"))
    torch.manual_seed(0)
    model = ASRTask.build_model(argparse.Namespace(**conf)).eval()
    with torch.no_grad():
        model.ctc.ctc_lo.bias[2:-1] += 2.0
    return model, conf


def test_bpe_models_search_the_lexicon_in_pieces(bpe_model, lm_files):
    """BPE pieces mark word starts themselves: the lexicon is spelt in pieces, the blank is the search's boundary."""
    model, conf = bpe_model
    _, lexicon, arpa = lm_files
    rec = CTCRescoringRecognizer(model, conf, options(nbest=3), lexicon, arpa)
    assert rec.sil == "<blank>"
    spelt = dict(line.split(maxsplit=1) for line in open(rec._lexicon))
    assert spelt["dead"].split()[0].startswith("\u2581") and set(spelt) == set(WORDS)
    out = rec(waves())
    assert all(w in WORDS for nbest in out for text, _, _ in nbest for w in text.split())
    assert any(text for nbest in out for text, _, _ in nbest)
    free = CTCRescoringRecognizer(model, conf, options(search="ctc", nbest=1))(waves())
    assert all(len(n) == 1 and "\u2581" not in n[0][0] for n in free)      # pieces joined into words
