"""Token lists in ESPnet's layout for bpe, char and word units."""
import subprocess
import sys

import sentencepiece as spm

from tests.conftest import ROOT

TEXT = "\n".join(f"u_{i:03d} {s}" for i, s in enumerate(
    ["the cat sat on the mat", "a dog ran in the park", "the rain in spain stays mainly in the plain",
     "we have nothing to fear but fear itself", "all that glitters is not gold"] * 20)) + "\n"


def run(tmp_path, *args):
    (tmp_path / "text").write_text(TEXT)
    out = tmp_path / "tok"
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.make_tokens", "--text", str(tmp_path / "text"),
                        "--output_dir", str(out), *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out, (out / "tokens.txt").read_text().split("\n")[:-1]


def test_bpe(tmp_path):
    out, tokens = run(tmp_path, "--token_type", "bpe", "--nbpe", "40")
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert len(tokens) == len(set(tokens))
    sp = spm.SentencePieceProcessor(model_file=str(out / "bpe.model"))
    assert set(sp.encode("the cat sat in the park", out_type=str)) <= set(tokens)


def test_char_and_word(tmp_path):
    _, tokens = run(tmp_path, "--token_type", "char")
    assert "<space>" in tokens and "t" in tokens and " " not in tokens
    _, words = run(tmp_path, "--token_type", "word")
    assert words[2] == "the"                                  # most frequent first
    assert "glitters" in words


def test_empty_transcript_is_an_error(tmp_path):
    (tmp_path / "text").write_text("u_1 hello\nu_2\n")
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.make_tokens", "--text", str(tmp_path / "text"),
                        "--output_dir", str(tmp_path / "tok")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "text:2: empty transcript" in r.stderr
    assert not (tmp_path / "tok").exists()


def test_bad_bytes_and_missing_file_are_one_line_errors(tmp_path):
    (tmp_path / "text").write_bytes(b"u_1 hello\nu_2 caf\xe9\n")
    for text, expected in ((tmp_path / "text", "text:2: not valid UTF-8"),
                           (tmp_path / "missing", "cannot read")):
        r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.make_tokens", "--text", str(text),
                            "--output_dir", str(tmp_path / "tok")], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("make_tokens: ") and str(text) in r.stderr and expected in r.stderr, r.stderr
        assert not (tmp_path / "tok").exists() and not (tmp_path / "tok.tmp").exists()


def test_rerun_replaces_the_output_dir(tmp_path):
    out, _ = run(tmp_path, "--token_type", "bpe", "--nbpe", "40")
    (tmp_path / "tok.tmp").mkdir()
    (tmp_path / "tok.tmp" / "bpe.model").write_text("left by a killed run")
    out, tokens = run(tmp_path, "--token_type", "char")
    assert sorted(p.name for p in out.iterdir()) == ["tokens.txt"] and "<space>" in tokens
    assert not (tmp_path / "tok.tmp").exists()


def test_too_many_bpe_units_is_one_line_error(tmp_path):
    (tmp_path / "text").write_text("u_1 hello world\n")
    r = subprocess.run([sys.executable, "-m", "mpq_plugins.bin.make_tokens", "--text", str(tmp_path / "text"),
                        "--nbpe", "300", "--output_dir", str(tmp_path / "tok")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "make_tokens: sentencepiece failed" in r.stderr and "--nbpe 300" in r.stderr
    assert not (tmp_path / "tok").exists() and not (tmp_path / "tok.tmp").exists()
