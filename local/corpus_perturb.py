"""test_perturbed: test utterances under acoustic conditions the training never saw.

Each utterance gets one condition, in turn (the order of CONDITIONS, from a seeded start): room
reverberation, white noise at 20 and 10 dB SNR, babble-like noise (other test utterances mixed in) at
10 dB, a pitch shift up or down, a tempo change faster or slower, and the telephone band (8 kHz,
300-3400 Hz, back to 16 kHz). sox does the filters; the noise is mixed here at an exact SNR over the
whole utterance. Output: 16 kHz mono 16-bit WAV, written atomically (a rerun keeps what is there).
"""
import os
import random
import subprocess

import numpy as np
import soundfile

CONDITIONS = ("reverb", "white20", "white10", "babble10", "pitch_up", "pitch_down", "tempo_fast", "tempo_slow",
              "telephone")
SNR_DB = {"white20": 20.0, "white10": 10.0, "babble10": 10.0}
SOX = {   # sox effects of each filter condition
    "reverb": ["reverb", "60", "50", "80"],
    "pitch_up": ["pitch", "250"],
    "pitch_down": ["pitch", "-250"],
    "tempo_fast": ["tempo", "-s", "1.2"],
    "tempo_slow": ["tempo", "-s", "0.85"],
    "telephone": ["rate", "8k", "sinc", "300-3400", "rate", "16k"],
}


def assign(utt_ids, seed):
    """{utt id: condition}: the conditions in turn over the utterances, from a seeded start."""
    start = random.Random(seed).randrange(len(CONDITIONS))
    return {u: CONDITIONS[(start + i) % len(CONDITIONS)] for i, u in enumerate(utt_ids)}


def _mix(x, noise, snr_db):
    noise = np.resize(noise, x.shape)
    p_x, p_n = float(np.mean(x ** 2)), float(np.mean(noise ** 2))
    if p_x == 0 or p_n == 0:
        return x
    return x + noise * np.sqrt(p_x / (p_n * 10 ** (snr_db / 10)))


def perturb(src, dst, condition, seed, babble_sources=()):
    """Write src (a 16 kHz WAV) under condition to dst; babble_sources: other WAVs mixed for babble."""
    if os.path.exists(dst):
        return 0
    tmp = dst + ".tmp.wav"
    if condition in SOX:
        r = subprocess.run(["sox", "-q", src, "-r", "16000", "-b", "16", "-c", "1", tmp] + SOX[condition]
                           + (["rate", "16k"] if condition != "telephone" else []) + ["norm", "-1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise RuntimeError(f"sox ({condition}) on {src} failed: {r.stderr.decode(errors='replace')[-300:]}")
    else:
        x, fs = soundfile.read(src, dtype="float64")
        rng = np.random.default_rng(seed)
        if condition.startswith("white"):
            noise = rng.standard_normal(len(x))
        elif condition.startswith("babble"):
            parts = [soundfile.read(p, dtype="float64")[0] for p in babble_sources]
            if not parts:
                raise ValueError(f"babble for {src} needs other utterances")
            noise = sum(np.resize(p, x.shape) / (np.sqrt(np.mean(p ** 2)) + 1e-9) for p in parts)
        else:
            raise ValueError(f"unknown condition {condition!r}")
        y = _mix(x, noise, SNR_DB[condition])
        peak = np.max(np.abs(y))
        if peak > 0.99:
            y *= 0.99 / peak
        soundfile.write(tmp, y.astype(np.float32), fs, subtype="PCM_16")
    os.replace(tmp, dst)
    return 1


def perturb_all(items, seed):
    """items: [(src wav, dst wav, condition)], perturbed in order (babble from the three items after each)."""
    made = 0
    srcs = [s for s, _, _ in items]
    for i, (src, dst, cond) in enumerate(items):
        others = [srcs[(i + k) % len(srcs)] for k in (1, 2, 3)] if cond.startswith("babble") else ()
        made += perturb(src, dst, cond, seed * 100003 + i, others)
    return made
