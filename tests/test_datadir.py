"""Data dir validation: each kind of bad input gets a message naming the file and line."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from mpq_plugins.datadir import DataDirError, read_table, validate_datadir, write_datadir
from tests.conftest import ROOT


def make_dir(tmp_path, n=3):
    wavs = []
    for i in range(n):
        p = tmp_path / f"a_{i}.wav"
        soundfile.write(p, (np.sin(np.arange(8000) * 0.05 * (i + 1)) * 0.3).astype(np.float32), 16000, subtype="PCM_16")
        wavs.append(str(p))
    d = tmp_path / "data"
    write_datadir(str(d), [(f"spk1_{i}", "spk1", wavs[i], f"word number {i}") for i in range(n)])
    return d


def problem(d):
    with pytest.raises(DataDirError) as e:
        validate_datadir(str(d))
    return str(e.value)


def test_good_dir(tmp_path):
    d = make_dir(tmp_path)
    assert validate_datadir(str(d)) == 3
    assert (d / "spk2utt").read_text() == "spk1 spk1_0 spk1_1 spk1_2\n"


def test_missing_audio(tmp_path):
    d = make_dir(tmp_path)
    os.remove(tmp_path / "a_1.wav")
    msg = problem(d)
    assert "wav.scp:2" in msg and "a_1.wav does not exist" in msg


def test_corrupt_audio(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "a_2.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    msg = problem(d)
    assert "wav.scp:3" in msg and "not readable audio" in msg


def test_transcript_for_unknown_utterance(tmp_path):
    d = make_dir(tmp_path)
    with open(d / "text", "a") as f:
        f.write("spk1_9 extra words\n")
    assert "text:4: utterance spk1_9 has no audio" in problem(d)


def test_empty_transcript(tmp_path):
    d = make_dir(tmp_path)
    lines = (d / "text").read_text().splitlines()
    lines[1] = "spk1_1"
    (d / "text").write_text("\n".join(lines) + "\n")
    assert "text:2: empty transcript for spk1_1" in problem(d)


def test_non_utf8(tmp_path):
    d = make_dir(tmp_path)
    with open(d / "text", "ab") as f:
        f.write(b"spk1_3 caf\xe9\n")
    assert "text:4: not valid UTF-8" in problem(d)


def test_unsorted_and_speaker_prefix(tmp_path):
    d = make_dir(tmp_path)
    lines = (d / "utt2spk").read_text().splitlines()
    (d / "utt2spk").write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")
    assert "utt2spk:2: unsorted key" in problem(d)


def test_cli_exit_code(tmp_path):
    d = make_dir(tmp_path)
    os.remove(tmp_path / "a_0.wav")
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.validate_data_dir", "--data", str(d)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "a_0.wav does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.validate_data_dir", "--data", str(d), "--no_audio"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and f"{d}: 3 utterances OK" in r.stdout, r.stderr


def test_read_table(tmp_path):
    f = tmp_path / "t"
    f.write_text("a b  c \nk\tv w\nx\n")
    assert read_table(str(f)) == [("a", "b  c", 1), ("k", "v w", 2), ("x", "", 3)]  # tab ends the key too
    f.write_text("a b\n\nc d\n")
    with pytest.raises(DataDirError, match="t:2: empty line"):
        read_table(str(f))
