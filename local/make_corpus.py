"""Synthesise the embedded default corpus into Kaldi data dirs (stage 1 of the default recipe, local/data.sh).

    python local/make_corpus.py --datadir data --wavdir data/local/wav --nj 2

Sentence text comes from Debian's word lists, speech from Debian's TTS engines; the modules beside this
script do the work (corpus_text.py: sentence pool, corpus_speakers.py: who speaks in which set,
corpus_tts.py: synthesis). Writes <datadir>/{train,dev,test,test_unseen_voice}/ (and test_perturbed/: test utterances under
unseen acoustic conditions, corpus_perturb.py, with --n_perturbed) and
<datadir>/local/corpus/ (vocabulary, speaker table, and the language-model text: every pool sentence
not used in dev or test). Audio already on disk is kept, so an interrupted run resumes where it stopped.
"""
import argparse
import concurrent.futures
import os
import random
import shutil
import sys
import time

# python puts this script's dir first on sys.path, so the recipe's own modules are found beside it
import corpus_speakers as spk_mod
from corpus_text import sentence_pool
from corpus_perturb import assign, perturb_all
from corpus_tts import ENGINE_TOOLS, synthesise

try:
    from mpq_plugins.datadir import DataDirError, validate_datadir, write_datadir
except ModuleNotFoundError as e:
    if e.name != "mpq_plugins":
        raise
    sys.exit("make_corpus: cannot import mpq_plugins; source path.sh first (it puts the repository root on PYTHONPATH)")

SETS = ("train", "dev", "test", "test_unseen_voice")   # synthesised; test_perturbed is made from test


def write_file(path, text):
    """Write through a temp file, so a killed run never leaves a half-written file in place."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def check_tools():
    missing = [t for t in list(ENGINE_TOOLS.values()) + ["sox"] if shutil.which(t) is None]
    if missing:
        sys.exit(f"make_corpus: missing Debian tools: {' '.join(missing)} (run tools/setup.sh, or "
                 "apt-get install sox espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k "
                 "festvox-us-slt-hts)")


def plan(seed, sizes, vocab_size, train_layout=None):
    sentences, vocab = sentence_pool(vocab_size=vocab_size)
    rng = random.Random(seed)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    need = sum(sizes.values())
    if need > len(sentences):
        sys.exit(f"make_corpus: asked for {need} utterances but the pool holds {len(sentences)} sentences")
    design = spk_mod.design(seed, train_layout)
    utts, start = {}, 0
    # held-out sets first, so their sentences stay the same whatever the training size
    for name in ("dev", "test", "test_unseen_voice", "train"):
        ids = order[start:start + sizes[name]]
        start += sizes[name]
        counts = spk_mod.allocate(design[name], sizes[name])
        it = iter(ids)
        utts[name] = [(spk, [(f"{spk.spk_id}_{k:05d}", sentences[next(it)]) for k in range(c)])
                      for spk, c in zip(design[name], counts)]
    heldout = {t for n in ("dev", "test", "test_unseen_voice") for _, us in utts[n] for _, t in us}
    lm_text = [s for s in sentences if s not in heldout]
    return utts, vocab, lm_text, design


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datadir", default="data")
    p.add_argument("--wavdir", default="data/local/wav")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n_train", type=int, default=3000)
    p.add_argument("--n_dev", type=int, default=300)
    p.add_argument("--n_test", type=int, default=500)
    p.add_argument("--n_unseen", type=int, default=300)
    p.add_argument("--n_perturbed", type=int, default=0,
                   help="test_perturbed: this many test utterances (evenly spread) under unseen acoustic conditions")
    p.add_argument("--vocab_size", type=int, default=3000)
    p.add_argument("--train_speakers", default="10,3,3",
                   help="training speakers: espeak-ng speakers, speakers per flite voice, per festival voice")
    p.add_argument("--nj", type=int, default=2)
    p.add_argument("--chunk", type=int, default=40, help="utterances per synthesis job")
    a = p.parse_args(argv)
    check_tools()
    sizes = {"train": a.n_train, "dev": a.n_dev, "test": a.n_test, "test_unseen_voice": a.n_unseen}
    try:
        layout = tuple(int(x) for x in a.train_speakers.split(","))
        assert len(layout) == 3
        utts, vocab, lm_text, design = plan(a.seed, sizes, a.vocab_size, layout)
    except (ValueError, AssertionError) as e:
        sys.exit(f"make_corpus: bad --train_speakers {a.train_speakers!r}: {e or 'give three numbers, e.g. 10,3,3'}")

    wavdir = os.path.abspath(a.wavdir)
    jobs = []
    for name in SETS:
        os.makedirs(os.path.join(wavdir, name), exist_ok=True)
        for spk, us in utts[name]:
            items = [(u, t, os.path.join(wavdir, name, u + ".wav")) for u, t in us]
            for i in range(0, len(items), a.chunk):
                jobs.append((spk, items[i:i + a.chunk]))
    total = sum(len(j[1]) for j in jobs)
    t0, done, made = time.time(), 0, 0
    print(f"make_corpus: {total} utterances, {sum(len(v) for v in design.values())} speakers, nj={a.nj}", flush=True)
    with concurrent.futures.ProcessPoolExecutor(a.nj) as ex:
        futs = {ex.submit(synthesise, spk, items, wavdir): len(items) for spk, items in jobs}
        last = 0.0
        for f in concurrent.futures.as_completed(futs):
            made += f.result()
            done += futs[f]
            if time.time() - last > 10 or done == total:
                last = time.time()
                print(f"  synthesised {done}/{total} ({made} new) in {time.time() - t0:.0f}s", flush=True)

    sets = SETS
    if a.n_perturbed:
        test = [(spk, u, t) for spk, us in utts["test"] for u, t in us]
        if a.n_perturbed > len(test):
            sys.exit(f"make_corpus: --n_perturbed {a.n_perturbed} is more than the {len(test)} test utterances")
        picked = [test[i * len(test) // a.n_perturbed] for i in range(a.n_perturbed)]
        cond = assign([u for _, u, _ in picked], a.seed)
        os.makedirs(os.path.join(wavdir, "test_perturbed"), exist_ok=True)
        items = [(os.path.join(wavdir, "test", u + ".wav"), os.path.join(wavdir, "test_perturbed", f"{u}_{cond[u]}.wav"),
                  cond[u]) for _, u, _ in picked]
        chunks = [items[i:i + a.chunk] for i in range(0, len(items), a.chunk)]
        with concurrent.futures.ProcessPoolExecutor(a.nj) as ex:
            made = sum(ex.map(perturb_all, chunks, [a.seed + i for i in range(len(chunks))]))
        print(f"  perturbed {len(items)} test utterances ({made} new) in {time.time() - t0:.0f}s", flush=True)
        utts["test_perturbed"] = [(spk, [(f"{u}_{cond[u]}", t)]) for spk, u, t in picked]
        sets = SETS + ("test_perturbed",)
    for name in sets:
        rows = sorted((u, spk.spk_id, os.path.join(wavdir, name, u + ".wav"), t) for spk, us in utts[name] for u, t in us)
        write_datadir(os.path.join(a.datadir, name), rows)
        try:
            n = validate_datadir(os.path.join(a.datadir, name))
        except DataDirError as e:
            sys.exit(f"make_corpus: {e}")
        print(f"  {a.datadir}/{name}: {n} utterances")
    local = os.path.join(a.datadir, "local", "corpus")
    os.makedirs(local, exist_ok=True)
    write_file(os.path.join(local, "vocab.txt"), "\n".join(vocab) + "\n")
    write_file(os.path.join(local, "lm_train.txt"), "".join(f"lm_{i:06d} {t}\n" for i, t in enumerate(lm_text)))
    write_file(os.path.join(local, "speakers.tsv"), "spk_id\tengine\tvoice\trate\tpitch\tset\n" + "".join(
        f"{s.describe()}\t{name}\n" for name in SETS for s in design[name]))
    print(f"make_corpus: done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
