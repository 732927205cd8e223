"""Speaker design: who speaks in train, dev, test and test_unseen_voice.

Train, dev and test use the same engines and voices but never the same speaker settings:
held-out espeak accent x variant pairs and held-out rates/pitches, flite and festival voices
at held-out tempo/pitch shifts. test_unseen_voice uses voices training never heard.
espeak-ng is the least natural engine, so it gets a smaller share of the utterances.
"""
import itertools
import random

from corpus_tts import Speaker

ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
FLITE_VOICES = ["kal16", "rms", "slt"]
FESTIVAL_VOICES = ["kal_diphone", "cmu_us_slt_arctic_hts"]
UNSEEN = [("espeak", "en-us-nyc+m2"), ("espeak", "en-gb-x-gbcwmd+f3"),
          ("flite", "awb"), ("festival", "ked_diphone")]

# Rates and pitches: training settings and held-out settings never overlap.
ESPEAK_RATE = {"train": [150, 160, 170, 180], "heldout": [145, 155, 165, 175]}
ESPEAK_PITCH = {"train": [30, 45, 60, 75], "heldout": [38, 52, 68]}
SHIFT_TEMPO = {"train": [0.9, 1.0, 1.12], "heldout": [0.95, 1.06]}
SHIFT_CENTS = {"train": [-150, 0, 150], "heldout": [-75, 75, 220]}

ENGINE_SHARE = {"espeak": 0.3, "flite": 0.4, "festival": 0.3}
# number of espeak speakers, speakers per flite voice, speakers per festival voice
LAYOUT = {"train": (10, 3, 3), "dev": (3, 1, 1), "test": (4, 1, 1)}
SET_PREFIX = {"train": "tr", "dev": "dv", "test": "ts", "test_unseen_voice": "uv"}


def design(seed=1, train_layout=None):
    """Return {set_name: [Speaker]} for all four sets, deterministic for a seed.

    train_layout: (espeak speakers, speakers per flite voice, speakers per festival voice) of the
    training set; default LAYOUT["train"].
    """
    n_shift = len(SHIFT_TEMPO["train"]) * len(SHIFT_CENTS["train"])
    n_pairs = len(ESPEAK_ACCENTS) * len(ESPEAK_VARIANTS) - LAYOUT["dev"][0] - LAYOUT["test"][0]
    want = LAYOUT["train"] if train_layout is None else tuple(train_layout)
    if not (1 <= want[0] <= n_pairs and 1 <= want[1] <= n_shift and 1 <= want[2] <= n_shift):
        raise ValueError(f"train speaker layout {want} is outside 1..{n_pairs} espeak speakers and "
                         f"1..{n_shift} speakers per flite/festival voice")
    rng = random.Random(seed)
    pairs = [f"{a}+{v}" for a, v in itertools.product(ESPEAK_ACCENTS, ESPEAK_VARIANTS)]
    rng.shuffle(pairs)
    train_shifts = list(itertools.product(SHIFT_TEMPO["train"], SHIFT_CENTS["train"]))
    heldout_shifts = list(itertools.product(SHIFT_TEMPO["heldout"], SHIFT_CENTS["heldout"]))
    # each flite/festival voice gets its own queue of held-out settings, so dev and test never share one
    heldout = {v: rng.sample(heldout_shifts, len(heldout_shifts)) for v in FLITE_VOICES + FESTIVAL_VOICES}
    out = {}
    for set_name, (n_esp, n_fl, n_fe) in LAYOUT.items():
        kind = "train" if set_name == "train" else "heldout"
        pre = SET_PREFIX[set_name]
        spks = []
        for i in range(n_esp):
            spks.append(Speaker(f"{pre}_espk{i:02d}", "espeak", pairs.pop(),
                                rng.choice(ESPEAK_RATE[kind]), rng.choice(ESPEAK_PITCH[kind])))
        for engine, voices, n in (("flite", FLITE_VOICES, n_fl), ("festival", FESTIVAL_VOICES, n_fe)):
            tag = "flit" if engine == "flite" else "fest"
            for v in voices:
                settings = rng.sample(train_shifts, n) if kind == "train" else [heldout[v].pop() for _ in range(n)]
                for tempo, cents in settings:
                    spks.append(Speaker(f"{pre}_{tag}{len(spks):02d}", engine, v, tempo, cents))
        out[set_name] = spks
    unseen = []
    for i, (engine, voice) in enumerate(UNSEEN):
        if engine == "espeak":
            unseen.append(Speaker(f"uv_espk{i:02d}", engine, voice, 165, 50))
        else:
            tag = "flit" if engine == "flite" else "fest"
            unseen.append(Speaker(f"uv_{tag}{i:02d}", engine, voice, 1.0, 0))
    out["test_unseen_voice"] = unseen
    # Another training layout changes only the training speakers: the default ones are drawn as
    # above (so dev and test stay the same), then some are dropped or more are drawn from what is left.
    out["train"] = _resize_train(out["train"], want, pairs, train_shifts, random.Random(seed + 7919))
    return out


def _resize_train(spks, want, pairs, train_shifts, rng):
    n_esp, n_fl, n_fe = want
    keep = []
    per_voice = {}
    for s in spks:
        per_voice.setdefault(s.voice if s.engine != "espeak" else "espeak", []).append(s)
    keep += per_voice["espeak"][:n_esp]
    for v in FLITE_VOICES + FESTIVAL_VOICES:
        keep += per_voice[v][:n_fl if v in FLITE_VOICES else n_fe]
    used = {(s.voice, s.rate, s.pitch) for s in spks}
    extra = []
    for _ in range(n_esp - len(per_voice["espeak"])):
        extra.append(("espeak", pairs.pop(), rng.choice(ESPEAK_RATE["train"]), rng.choice(ESPEAK_PITCH["train"])))
    for v in FLITE_VOICES + FESTIVAL_VOICES:
        n = (n_fl if v in FLITE_VOICES else n_fe) - len(per_voice[v])
        free = [t for t in train_shifts if (v, t[0], t[1]) not in used]
        for tempo, cents in rng.sample(free, max(n, 0)):
            extra.append(("flite" if v in FLITE_VOICES else "festival", v, tempo, cents))
    start = len(spks)
    for i, (engine, voice, rate, pitch) in enumerate(extra):
        tag = {"espeak": "espk", "flite": "flit", "festival": "fest"}[engine]
        keep.append(Speaker(f"tr_{tag}{start + i:02d}", engine, voice, rate, pitch))
    return keep


def allocate(speakers, n_utts):
    """Utterances per speaker: engine shares split evenly among that engine's speakers."""
    engines = {s.engine for s in speakers}
    total_share = sum(ENGINE_SHARE[e] for e in engines)
    per_engine = {e: sum(1 for s in speakers if s.engine == e) for e in engines}
    want = [n_utts * ENGINE_SHARE[s.engine] / total_share / per_engine[s.engine] for s in speakers]
    counts = [int(w) for w in want]
    order = sorted(range(len(speakers)), key=lambda i: -(want[i] - counts[i]))
    for i in order[: n_utts - sum(counts)]:
        counts[i] += 1
    return counts
