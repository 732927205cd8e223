"""Tiny, self-made test corpora (no network, no downloads)."""
import os
import random

import numpy as np
import soundfile

WORDS = ("THE", "A", "HOUSE", "WAS", "QUIET", "AND", "SHE", "SAID", "DON'T", "GO", "NORTH",
         "OF", "MARY'S", "GARDEN", "NEVER", "LIGHT", "WATER", "HORSES", "CAME", "HOME")


def _tone(rng, sr=16000):
    """0.3-0.8 s of a few sine tones plus a little noise, as float32 in [-1, 1]."""
    n = int(sr * rng.uniform(0.3, 0.8))
    t = np.arange(n) / sr
    x = np.zeros(n)
    for _ in range(rng.randint(2, 4)):
        x += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t + rng.uniform(0, 6.3))
    x += np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 0.01, n)
    return np.clip(x, -1, 1).astype(np.float32)


def make_librispeech(root, sets=("train-clean-100", "dev-clean"), n_spk=2, n_chap=1, n_utt=3, seed=0):
    """Build root/LibriSpeech/<set>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac plus
    <speaker>-<chapter>.trans.txt in LibriSpeech's exact layout; return the corpus path.

    Speaker ids are distinct across sets (as in LibriSpeech) and of varying length; chapter ids
    are distinct across the corpus; utterance numbers are 4 digits from 0000.
    """
    rng = random.Random(seed)
    corpus = os.path.join(str(root), "LibriSpeech")
    os.makedirs(corpus, exist_ok=True)
    with open(os.path.join(corpus, "README.TXT"), "w") as f:
        f.write("tiny LibriSpeech-layout test fixture\n")
    spk_ids = rng.sample(range(10, 9000), n_spk * len(sets))
    chap_ids = rng.sample(range(100, 200000), n_spk * n_chap * len(sets))
    for si, name in enumerate(sets):
        for k in range(n_spk):
            spk = spk_ids[si * n_spk + k]
            for c in range(n_chap):
                chap = chap_ids[(si * n_spk + k) * n_chap + c]
                d = os.path.join(corpus, name, str(spk), str(chap))
                os.makedirs(d, exist_ok=True)
                lines = []
                for u in range(n_utt):
                    utt = f"{spk}-{chap}-{u:04d}"
                    soundfile.write(os.path.join(d, utt + ".flac"), _tone(rng), 16000,
                                    format="FLAC", subtype="PCM_16")
                    lines.append(f"{utt} {' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))}\n")
                with open(os.path.join(d, f"{spk}-{chap}.trans.txt"), "w") as f:
                    f.writelines(lines)
    return corpus


TINY_TOKENS = ["<blank>", "<unk>", "<space>", "a", "b", "c", "d", "e", "f", "g", "<sos/eos>"]


def tiny_asr_conf(config=None):
    """The full ESPnet config (dict) of tests/conf/train_tiny.yaml with a tiny char token list."""
    from espnet2.tasks.asr import ASRTask
    root = os.path.dirname(os.path.abspath(__file__))
    args = ASRTask.get_parser().parse_args(
        ["--config", config or os.path.join(root, "conf", "train_tiny.yaml"), "--output_dir", "unused",
         "--token_type", "char", "--token_list", "unused"])
    args.token_list = list(TINY_TOKENS)
    return vars(args)


def tiny_asr_model(config=None, seed=0):
    """A real ESPnet ASR model (Conformer encoder, Transformer decoder, CTC) from tests/conf/train_tiny.yaml."""
    import argparse

    import torch
    from espnet2.tasks.asr import ASRTask
    torch.manual_seed(seed)
    return ASRTask.build_model(argparse.Namespace(**tiny_asr_conf(config)))


def tiny_batch():
    """Two short random utterances and their token ids: a batch for ESPnet's forward."""
    import torch
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6400]),
            torch.randint(2, 10, (2, 5), generator=g), torch.tensor([5, 4]))


def train_updates(model, conf, updates=2, lr=1e-3):
    """A few Adam updates of a model of our task on tiny_batch, with the task's own optimizers and their
    hooks (mixed-precision schedules); returns the last forward's stats."""
    import argparse

    from mpq_plugins.espnet.task import QuantASRTask
    args = argparse.Namespace(**conf)
    args.optim, args.optim_conf = "adam", {"lr": lr}
    (opt,) = QuantASRTask.build_optimizers(args, model)
    model.train()
    stats = None
    for _ in range(updates):
        opt.zero_grad()
        loss, stats, _ = model(*tiny_batch())
        loss.backward()
        opt.step()
    return stats
