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
                        "--outdir", str(out), *args], cwd=ROOT, capture_output=True, text=True)
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
                        "--outdir", str(tmp_path / "tok")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "text:2: empty transcript" in r.stderr
    assert not (tmp_path / "tok").exists()
