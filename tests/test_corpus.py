"""The synthetic corpus (the default recipe's local/make_corpus.py and the modules beside it): text
normalisation, speaker design, synthesis and resume."""
import os
import shutil
import subprocess
import sys
import wave

import pytest

from tests.conftest import ROOT

LOCAL = os.path.join(ROOT, "local")
MAKE_CORPUS = os.path.join(LOCAL, "make_corpus.py")
if LOCAL not in sys.path:
    sys.path.insert(0, LOCAL)  # recipe code, not part of mpq_plugins: imported the way make_corpus.py does
import corpus_speakers as spk  # noqa: E402
from corpus_text import normalise, sentence_pool  # noqa: E402

HAVE_TTS = all(shutil.which(t) for t in ("espeak-ng", "flite", "festival", "sox"))


def test_normalise():
    assert normalise("The cat's hat -- isn't it RED?") == ["the", "cat's", "hat", "isn't", "it", "red"]
    assert normalise("He was born in 1999.") is None          # digits are rejected
    assert normalise("mail me @ home") is None                 # odd symbols are rejected
    assert normalise("'quoted' words; and (brackets)") == ["quoted", "words", "and", "brackets"]


@pytest.mark.skipif(not os.path.exists("/usr/share/wordnet/data.noun"), reason="wordnet-base not installed")
def test_sentence_pool_is_closed_vocabulary():
    sentences, vocab = sentence_pool(vocab_size=3000)
    vocab = set(vocab)
    assert len(vocab) == 3000
    assert len(sentences) > 5000
    assert len(set(sentences)) == len(sentences)
    for s in sentences:
        words = s.split()
        assert 5 <= len(words) <= 14
        assert all(w in vocab for w in words)
        assert s == s.lower() and not any(c.isdigit() for c in s)


def test_speaker_design_keeps_test_speakers_unseen():
    d = spk.design(seed=3)
    assert d == spk.design(seed=3)                               # deterministic for a seed
    train = {(s.engine, s.voice, s.rate, s.pitch) for s in d["train"]}
    for name in ("dev", "test", "test_unseen_voice"):
        for s in d[name]:
            assert (s.engine, s.voice, s.rate, s.pitch) not in train
    held = [(s.engine, s.voice, s.rate, s.pitch) for n in ("dev", "test") for s in d[n]]
    assert len(held) == len(set(held))                           # dev and test share no speaker
    train_voices = {s.voice for s in d["train"]}
    train_espeak_accents = {s.voice.split("+")[0] for s in d["train"] if s.engine == "espeak"}
    for s in d["test_unseen_voice"]:
        assert s.voice not in train_voices
        if s.engine == "espeak":
            assert s.voice.split("+")[0] not in train_espeak_accents
    ids = [s.spk_id for v in d.values() for s in v]
    assert len(ids) == len(set(ids))


def test_allocation_weights_engines():
    d = spk.design(seed=1)
    counts = spk.allocate(d["train"], 3000)
    assert sum(counts) == 3000
    per_engine = {}
    for s, c in zip(d["train"], counts):
        per_engine[s.engine] = per_engine.get(s.engine, 0) + c
    assert per_engine["espeak"] < per_engine["flite"]
    assert abs(per_engine["flite"] - 1200) <= 1 and abs(per_engine["espeak"] - 900) <= 1


@pytest.mark.skipif(not HAVE_TTS, reason="Debian TTS tools not installed")
def test_make_corpus_small_and_resume(tmp_path):
    cmd = [sys.executable, MAKE_CORPUS, "--datadir", str(tmp_path / "data"),
           "--wavdir", str(tmp_path / "wav"), "--n_train", "20", "--n_dev", "8", "--n_test", "8",
           "--n_unseen", "8", "--chunk", "5"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))  # as local/data.sh
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    texts = {}
    for name in ("train", "dev", "test", "test_unseen_voice"):
        with open(tmp_path / "data" / name / "text") as f:
            texts[name] = {line.split(" ", 1)[1].strip() for line in f}
    for name in ("dev", "test", "test_unseen_voice"):
        assert not texts[name] & texts["train"]                  # held-out sentences never occur in train
    with open(tmp_path / "data" / "train" / "wav.scp") as f:
        first_wav = f.readline().split()[1]
    with wave.open(first_wav) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.getnframes() > 16000 * 0.5
    # a killed run is resumed: only the missing audio is made again
    os.remove(first_wav)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(1 new)" in r.stdout
    assert os.path.exists(first_wav)


def test_other_training_layouts_keep_the_held_out_speakers():
    base = spk.design(seed=1)
    big = spk.design(seed=1, train_layout=(20, 5, 5))
    small = spk.design(seed=1, train_layout=(4, 1, 1))
    for name in ("dev", "test", "test_unseen_voice"):
        assert big[name] == base[name] == small[name]
    assert big["train"][:len(base["train"])] == base["train"]       # the default speakers, then new ones
    assert len(big["train"]) == 45 and len(small["train"]) == 4 + 3 + 2
    settings = [(s.engine, s.voice, s.rate, s.pitch) for s in big["train"]]
    assert len(set(settings)) == len(settings)
    held = {(s.engine, s.voice, s.rate, s.pitch) for n in ("dev", "test") for s in big[n]}
    assert not held & set(settings)
    with pytest.raises(ValueError, match="outside"):
        spk.design(seed=1, train_layout=(0, 1, 1))


def test_missing_tts_tool_is_one_clear_error(tmp_path):
    r = subprocess.run([sys.executable, MAKE_CORPUS, "--datadir", str(tmp_path / "d")],
                       cwd=ROOT, capture_output=True, text=True, env={"PATH": str(tmp_path), "PYTHONPATH": ROOT})
    assert r.returncode != 0
    assert "missing Debian tools: espeak-ng flite festival sox" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "d").exists()


@pytest.mark.skipif(not shutil.which("sox"), reason="sox not installed")
def test_perturbed_conditions_do_what_they_say(tmp_path):
    """test_perturbed's conditions: the noise at its SNR, the telephone band, the tempo; in turn over the
    utterances; a rerun keeps what is on disk."""
    import numpy as np
    import soundfile
    from corpus_perturb import CONDITIONS, assign, perturb, perturb_all
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
         + 0.05 * rng.standard_normal(len(t)) * np.sin(2 * np.pi * 0.5 * t) ** 2)
    src = tmp_path / "src.wav"
    soundfile.write(src, x.astype(np.float32), 16000, subtype="PCM_16")
    x = soundfile.read(src)[0]
    assert perturb(str(src), str(tmp_path / "w20.wav"), "white20", 1) == 1
    y, fs = soundfile.read(tmp_path / "w20.wav")
    assert fs == 16000 and len(y) == len(x)
    assert 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2)) == pytest.approx(20.0, abs=0.2)
    perturb(str(src), str(tmp_path / "tel.wav"), "telephone", 1)
    tel, fs = soundfile.read(tmp_path / "tel.wav")
    spec = np.abs(np.fft.rfft(tel)) ** 2
    freqs = np.fft.rfftfreq(len(tel), 1 / fs)
    assert fs == 16000 and spec[freqs > 4000].sum() < 1e-4 * spec.sum()          # nothing above the band
    perturb(str(src), str(tmp_path / "fast.wav"), "tempo_fast", 1)
    assert len(soundfile.read(tmp_path / "fast.wav")[0]) == pytest.approx(len(x) / 1.2, rel=0.02)
    assert perturb(str(src), str(tmp_path / "w20.wav"), "white10", 2) == 0      # there: kept
    ids = [f"u{i}" for i in range(2 * len(CONDITIONS))]
    cond = assign(ids, seed=3)
    assert [cond[u] for u in ids[:len(CONDITIONS)]] == [cond[u] for u in ids[len(CONDITIONS):]]
    assert set(cond.values()) == set(CONDITIONS) and assign(ids, seed=3) == cond
    items = [(str(src), str(tmp_path / f"{c}.wav"), c) for c in CONDITIONS]
    assert perturb_all(items, 1) == len(CONDITIONS)
    for _, dst, c in items:
        y, fs = soundfile.read(dst)
        assert fs == 16000 and y.ndim == 1 and np.abs(y).max() <= 1.0 and len(y) > 16000, c
