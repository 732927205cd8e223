"""Word n-gram LM (Kneser-Ney, hand-computed values) and the ESPnet word-LM scorer over characters."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from mpq_plugins.espnet.decoding import NEG, WordLMScorer
from mpq_plugins.espnet.wordlm import NgramLM

TOKENS = ["<blank>", "<unk>", "<space>", "a", "b", "c", "<sos/eos>"]
EOS = len(TOKENS) - 1


def tiny_lm(order=2):
    return NgramLM.train([["a", "b"], ["a", "c"]], ["a", "b", "c"], order)


def test_kneser_ney_by_hand():
    lm = tiny_lm()
    # unigram continuation counts a:1 b:1 c:1 </s>:2 (total 5); P(a) = 0.25 * 0.75 * 4/5 + 0.25/5
    uni = lm._probs(())
    assert uni[lm.index["a"]] == pytest.approx(0.2)
    assert uni[lm.eos] == pytest.approx(0.4)
    # P(b | a) = (1 - 0.75)/2 + 0.75 * 2/2 * P(b)
    assert math.exp(lm.logprobs(["a"])[lm.index["b"]]) == pytest.approx(0.275)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("hist", [[], ["a"], ["b", "a"], ["c", "c"]])
def test_distributions_sum_to_one(order, hist):
    lm = tiny_lm(order)
    assert np.exp(lm.logprobs(hist)).sum() == pytest.approx(1.0)


def test_save_load_round_trip(tmp_path):
    lm = tiny_lm(3)
    lm.save(tmp_path / "lm.json")
    back = NgramLM.load(tmp_path / "lm.json")
    assert np.allclose(back.logprobs(["a"]), lm.logprobs(["a"]))
    (tmp_path / "bad.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(ValueError, match="bad.json"):
        NgramLM.load(tmp_path / "bad.json")


def test_prefix_range():
    lm = NgramLM.train([["ab", "abc", "b"]], ["ab", "abc", "b", "ba"], 2)
    assert lm.prefix_range("a") == (0, 2)
    assert lm.prefix_range("ab") == (0, 2)
    assert lm.prefix_range("abc") == (1, 2)
    assert lm.prefix_range("b") == (2, 4)
    lo, hi = lm.prefix_range("c")
    assert lo == hi


def test_unknown_word_is_an_error():
    with pytest.raises(ValueError, match="'zz' is not in the vocabulary"):
        NgramLM.train([["a", "zz"]], ["a"], 2)


def spell(sentence):
    return [TOKENS.index("<space>" if c == " " else c) for c in sentence] + [EOS]


@pytest.mark.parametrize("sentence", ["ab b", "abc", "b ab abc", "ba ba"])
def test_scorer_sums_to_the_sentence_logprob(sentence):
    lm = NgramLM.train([["ab", "abc", "b"], ["b", "ab"]], ["ab", "abc", "b", "ba"], 3)
    scorer = WordLMScorer(lm, TOKENS, EOS)
    y, state, total = [EOS], None, 0.0                   # ESPnet starts from <sos> (= <sos/eos>)
    for tok in spell(sentence):
        scores, state = scorer.score(torch.tensor(y), state, None)
        total += float(scores[tok])
        y.append(tok)
    assert total == pytest.approx(lm.sentence_logprob(sentence.split()), abs=1e-4)


def test_scorer_keeps_only_vocabulary_spellings():
    lm = NgramLM.train([["ab", "b"]], ["ab", "b"], 2)
    scorer = WordLMScorer(lm, TOKENS, EOS)
    scores, state = scorer.score(torch.tensor([EOS]), None, None)
    assert scores[TOKENS.index("c")] == NEG                   # no word starts with c
    assert scores[TOKENS.index("<space>")] == NEG             # no empty word
    assert scores[EOS] == NEG
    assert scores[TOKENS.index("a")] > NEG
    scores, state = scorer.score(torch.tensor([EOS, TOKENS.index("a")]), state, None)
    assert scores[TOKENS.index("<space>")] == NEG             # "a" is only a prefix
    assert scores[TOKENS.index("b")] == pytest.approx(0.0, abs=1e-6)  # the only word under "a" is "ab"
    batch, states = scorer.batch_score(torch.tensor([[EOS, 3], [EOS, 4]]), [None, None], torch.zeros(2, 1))
    assert batch.shape == (2, len(TOKENS))


def test_train_word_lm_cli(tmp_path):
    (tmp_path / "lm.txt").write_text("u1 a b\nu2 a c\n")
    (tmp_path / "dev").write_text("d1 a b\n")
    (tmp_path / "bad").write_text("d1 a zebra\n")
    out = tmp_path / "lm" / "lm.json"
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.train_word_lm", "--text", str(tmp_path / "lm.txt"),
                        "--valid", str(tmp_path / "dev"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists() and float((tmp_path / "lm" / "perplexity").read_text()) > 1
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.train_word_lm", "--text", str(tmp_path / "lm.txt"),
                        "--valid", str(tmp_path / "bad"), "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert r.returncode != 0 and "bad" in r.stderr and "zebra" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_train_word_lm_plain_text_and_bad_input(tmp_path):
    def train(*args):
        return subprocess.run([sys.executable, "-m", "mpq_plugins.bin.train_word_lm", *map(str, args)],
                              capture_output=True, text=True)
    (tmp_path / "corpus.txt").write_text("a b\na c\n")               # one sentence a line, no ids
    (tmp_path / "dev").write_text("d1 a b\n")
    r = train("--text", tmp_path / "corpus.txt", "--text_format", "plain", "--valid", tmp_path / "dev",
              "--out", tmp_path / "lm.json")
    assert r.returncode == 0, r.stderr
    assert NgramLM.load(tmp_path / "lm.json").words == ["a", "b", "c"]
    (tmp_path / "bad.txt").write_bytes(b"u1 a b\nu2 caf\xe9\n")
    (tmp_path / "vocab").write_text("a\nb\n")
    for args, expected in (((tmp_path / "bad.txt",), "bad.txt:2: not valid UTF-8"),
                           ((tmp_path / "bad.txt", "--text_format", "plain"), "bad.txt:2: not valid UTF-8"),
                           ((tmp_path / "corpus.txt", "--text_format", "plain", "--vocab", tmp_path / "vocab"),
                            "corpus.txt: sentence 2: word 'c' is not in the vocabulary"),
                           ((tmp_path / "missing",), "cannot read")):
        r = train("--text", *args, "--out", tmp_path / "x.json")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("train_word_lm: ") and expected in r.stderr, r.stderr
        assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("order", [2, 3, 4])
def test_arpa_file_read_by_kenlm_gives_our_probabilities(order, tmp_path):
    """The ARPA file that the C++ decoder reads (through flashlight-text's KenLM) scores every sentence
    as the model does, unseen words and histories included."""
    import random
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import create_word_dict
    rng = random.Random(order)
    vocab = [f"w{i}" for i in range(30)]
    lm = NgramLM.train([[rng.choice(vocab[:20]) for _ in range(rng.randint(1, 6))] for _ in range(200)], vocab, order)
    lm.write_arpa(tmp_path / "lm.arpa")
    words = create_word_dict({w: [[w]] for w in vocab + ["<unk>"]})
    kenlm = KenLM(str(tmp_path / "lm.arpa"), words)
    for _ in range(50):
        sentence = [rng.choice(vocab) for _ in range(rng.randint(0, 5))]
        state, total = kenlm.start(False), 0.0
        for w in sentence:
            state, score = kenlm.score(state, words.get_index(w))
            total += score
        total += kenlm.finish(state)[1]
        assert total == pytest.approx(lm.sentence_logprob(sentence) / math.log(10), abs=1e-5)   # KenLM: log10


def test_sentences_begin_with_one_bos_as_in_arpa():
    lm = NgramLM.train([["a", "b"], ["a", "c"]], ["a", "b", "c"], 3)
    assert ("<s>",) in lm.counts[2] and ("<s>", "<s>") not in lm.counts[3]
    assert lm.counts[2][("<s>",)] == {"a": 2}                 # raw counts for n-grams that start with <s>
    assert lm.counts[3][("<s>", "a")] == {"b": 1, "c": 1}
    with pytest.raises(ValueError, match="order of at least 2"):
        NgramLM.train([["a"]], ["a"], 1).write_arpa("/dev/null")
