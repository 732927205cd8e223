"""egs/librispeech_100/local/prep_librispeech.py and the data.sh that runs it, on a tiny fixture."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

try:
    from tests.fixtures import make_librispeech
except ImportError:  # run with tests/ itself on sys.path
    from fixtures import make_librispeech

from mpq_plugins.datadir import validate_datadir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREP = os.path.join(REPO, "egs", "librispeech_100", "local", "prep_librispeech.py")
SETS = ("train-clean-100", "dev-clean")
ALL_SETS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")


def prep(corpus, datadir, sets=SETS):
    # run as the recipe runs it: the script by path, mpq_plugins from the repository root on PYTHONPATH
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, PREP, "--corpus", str(corpus), "--sets", ",".join(sets), "--datadir", str(datadir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def read(path):
    with open(path) as f:
        return [line.rstrip("\n").split(" ", 1) for line in f]


def transcripts(corpus, name):
    """{utt_id: text} straight from the fixture's .trans.txt files."""
    out = {}
    for t in glob.glob(os.path.join(corpus, name, "*", "*", "*.trans.txt")):
        for line in open(t):
            utt, text = line.rstrip("\n").split(" ", 1)
            out[utt] = text
    return out


def flacs(corpus, name="dev-clean"):
    return sorted(glob.glob(os.path.join(corpus, name, "*", "*", "*.flac")))


def trans_files(corpus, name="dev-clean"):
    return sorted(glob.glob(os.path.join(corpus, name, "*", "*", "*.trans.txt")))


def snapshot(d):
    return {os.path.relpath(p, d): open(p, "rb").read()
            for p in glob.glob(os.path.join(d, "**"), recursive=True) if os.path.isfile(p)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("corpus"), sets=SETS, n_spk=2, n_chap=2, n_utt=3)


@pytest.fixture
def corpus(pristine, tmp_path):
    """A private copy of the fixture corpus that a test may break."""
    dst = str(tmp_path / "LibriSpeech")
    shutil.copytree(pristine, dst)
    return dst


def assert_failed(r, datadir, *names):
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("prep_librispeech: "), r.stderr
    for n in names:
        assert str(n) in r.stderr, f"{n!r} not named in:\n{r.stderr}"
    for s in ALL_SETS:
        assert not os.path.exists(os.path.join(datadir, s.replace("-", "_"))), r.stderr
    if os.path.isdir(datadir):  # no staging leftovers either
        assert os.listdir(datadir) == [], os.listdir(datadir)


def test_happy_path(corpus, tmp_path):
    datadir = tmp_path / "data"
    r = prep(corpus, datadir)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(datadir)) == ["dev_clean", "train_clean_100"]
    out_lines = r.stdout.strip().splitlines()
    assert len(out_lines) == 2
    for name in SETS:
        d = str(datadir / name.replace("-", "_"))
        assert validate_datadir(d) == 2 * 2 * 3
        assert f"{name}: 12 utterances, 4 speakers" in r.stdout
        expected = transcripts(corpus, name)
        text = dict(read(f"{d}/text"))
        assert text == expected
        wav = dict(read(f"{d}/wav.scp"))
        assert sorted(wav) == sorted(expected)
        for utt, path in wav.items():
            assert os.path.isabs(path) and os.path.isfile(path)
            spk, chap, num = utt.split("-")
            assert path == os.path.join(corpus, name, spk, chap, utt + ".flac")
        u2s = dict(read(f"{d}/utt2spk"))
        assert sorted(u2s) == sorted(expected)
        for utt, spk in u2s.items():
            assert spk == utt.rsplit("-", 1)[0]
            assert utt.startswith(spk + "-")
        s2u = {k: v.split() for k, v in read(f"{d}/spk2utt")}
        assert len(s2u) == 4
        assert all(len(v) == 3 for v in s2u.values())
        assert {u: s for s, us in s2u.items() for u in us} == u2s
        assert [k for k, _ in read(f"{d}/text")] == sorted(expected)


def test_rerun_replaces_output(corpus, tmp_path):
    datadir = tmp_path / "data"
    assert prep(corpus, datadir).returncode == 0
    os.remove(flacs(corpus)[0])
    t = trans_files(corpus)[0]
    with open(t) as f:
        lines = f.readlines()
    with open(t, "w") as f:
        f.writelines(lines[1:])
    r = prep(corpus, datadir)
    assert r.returncode == 0, r.stderr
    assert validate_datadir(str(datadir / "dev_clean")) == 11
    assert sorted(os.listdir(datadir)) == ["dev_clean", "train_clean_100"]


def test_missing_corpus(tmp_path):
    r = prep(tmp_path / "nope", tmp_path / "data")
    assert_failed(r, str(tmp_path / "data"), "nope", "does not exist")


def test_missing_set_dir(corpus, tmp_path):
    datadir = str(tmp_path / "data")
    r = prep(corpus, datadir, sets=("train-clean-100", "dev-other"))
    assert_failed(r, datadir, os.path.join(corpus, "dev-other"), "does not exist")


def test_transcript_line_without_flac(corpus, tmp_path):
    datadir = str(tmp_path / "data")
    f = flacs(corpus)[1]
    os.remove(f)
    utt = os.path.basename(f)[:-5]
    t = os.path.join(os.path.dirname(f), utt.rsplit("-", 1)[0] + ".trans.txt")
    r = prep(corpus, datadir)
    assert_failed(r, datadir, f"{t}:2:", utt, "no audio")


def test_flac_without_transcript_line(corpus, tmp_path):
    datadir = str(tmp_path / "data")
    t = trans_files(corpus)[0]
    with open(t) as fh:
        lines = fh.readlines()
    with open(t, "w") as fh:
        fh.writelines(lines[:2])
    utt = lines[2].split()[0]
    r = prep(corpus, datadir)
    assert_failed(r, datadir, os.path.join(os.path.dirname(t), utt + ".flac"), "no transcript line")


def test_missing_transcript_file(corpus, tmp_path):
    datadir = str(tmp_path / "data")
    t = trans_files(corpus)[0]
    os.remove(t)
    r = prep(corpus, datadir)
    assert_failed(r, datadir, t, "missing")


@pytest.mark.parametrize("bad", ["{utt}\n", "{utt}   \n", "{utt} \t\n"])
def test_empty_transcript(corpus, tmp_path, bad):
    datadir = str(tmp_path / "data")
    t = trans_files(corpus)[0]
    with open(t) as fh:
        lines = fh.readlines()
    lines[1] = bad.format(utt=lines[1].split()[0])
    with open(t, "w") as fh:
        fh.writelines(lines)
    r = prep(corpus, datadir)
    assert_failed(r, datadir, f"{t}:2:", "empty transcript")


def test_non_utf8_transcript(corpus, tmp_path):
    datadir = str(tmp_path / "data")
    t = trans_files(corpus)[0]
    with open(t, "rb") as fh:
        lines = fh.readlines()
    lines[2] = lines[2].rstrip(b"\n") + b" CAF\xe9\n"  # latin-1 e-acute
    with open(t, "wb") as fh:
        fh.writelines(lines)
    r = prep(corpus, datadir)
    assert_failed(r, datadir, f"{t}:3:", "UTF-8")


def _bad_id_in_transcript(corpus):
    t = trans_files(corpus)[0]
    with open(t) as fh:
        lines = fh.readlines()
    utt, text = lines[0].split(" ", 1)
    lines[0] = utt.replace("-0000", "-00x0") + " " + text
    with open(t, "w") as fh:
        fh.writelines(lines)
    return f"{t}:1:"


def _transcript_for_other_chapter(corpus):
    t = trans_files(corpus)[0]
    with open(t) as fh:
        lines = fh.readlines()
    spk, chap, num = lines[0].split(" ", 1)[0].split("-")
    lines[0] = f"{spk}-{int(chap) + 1}-{num} HELLO\n"
    with open(t, "w") as fh:
        fh.writelines(lines)
    return f"{t}:1:"


def _bad_flac_name(corpus):
    f = flacs(corpus)[0]
    bad = os.path.join(os.path.dirname(f), "take1.flac")
    shutil.copy(f, bad)
    return bad


def _flac_in_wrong_chapter(corpus):
    f = flacs(corpus)[0]
    spk, chap, num = os.path.basename(f)[:-5].split("-")
    bad = os.path.join(os.path.dirname(f), f"{spk}-{int(chap) + 1}-{num}.flac")
    shutil.copy(f, bad)
    return bad


def _bad_speaker_dir(corpus):
    d = os.path.dirname(os.path.dirname(flacs(corpus)[0]))
    bad = os.path.join(os.path.dirname(d), "spk" + os.path.basename(d))
    os.rename(d, bad)
    return bad


@pytest.mark.parametrize("breaker", [_bad_id_in_transcript, _transcript_for_other_chapter, _bad_flac_name,
                                     _flac_in_wrong_chapter, _bad_speaker_dir])
def test_malformed_id(corpus, tmp_path, breaker):
    datadir = str(tmp_path / "data")
    named = breaker(corpus)
    r = prep(corpus, datadir)
    assert_failed(r, datadir, named)


def test_corrupt_flac(corpus, tmp_path):
    datadir = str(tmp_path / "data")
    f = flacs(corpus)[3]
    with open(f, "wb") as fh:
        fh.write(os.urandom(2000))
    r = prep(corpus, datadir)
    assert_failed(r, datadir, f, "not readable audio")
    assert ".prep" not in r.stderr  # the message names the real output dir, not the staging one


def test_failed_rerun_keeps_earlier_output(corpus, tmp_path):
    datadir = tmp_path / "data"
    assert prep(corpus, datadir).returncode == 0
    before = snapshot(datadir)
    # bad input in one set: caught before anything is written
    t = trans_files(corpus, "train-clean-100")[0]
    with open(t, "ab") as fh:
        fh.write(b"\xff\xfe\n")
    r = prep(corpus, datadir)
    assert r.returncode != 0 and t in r.stderr, r.stderr
    assert snapshot(datadir) == before
    assert sorted(os.listdir(datadir)) == ["dev_clean", "train_clean_100"]
    # unreadable audio in the second set: caught by validation of the staged output
    with open(t, "rb") as fh:
        data = fh.read()
    with open(t, "wb") as fh:
        fh.write(data[:-3])
    f = flacs(corpus)[0]
    with open(f, "wb") as fh:
        fh.write(os.urandom(500))
    r = prep(corpus, datadir)
    assert r.returncode != 0 and f in r.stderr, r.stderr
    assert snapshot(datadir) == before
    assert sorted(os.listdir(datadir)) == ["dev_clean", "train_clean_100"]


def test_data_sh(tmp_path):
    corpus = make_librispeech(tmp_path, sets=ALL_SETS, n_spk=1, n_chap=1, n_utt=2, seed=3)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("PYTHONPATH", None)
    script = os.path.join(REPO, "egs", "librispeech_100", "local", "data.sh")
    r = subprocess.run(["bash", script, "--corpus", corpus, "--datadir", "data"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for s in ALL_SETS:
        assert validate_datadir(str(tmp_path / "data" / s.replace("-", "_"))) == 2
    r = subprocess.run(["bash", script, "--corpus", str(tmp_path / "missing")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and str(tmp_path / "missing") in r.stderr, r.stderr
    r = subprocess.run(["bash", script, "--bogus"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "--bogus" in r.stderr, r.stderr
