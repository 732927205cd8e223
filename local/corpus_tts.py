"""Speakers made from Debian's TTS engines, and batch synthesis to 16 kHz mono 16-bit WAV.

A speaker is one engine voice at one fixed speaking rate and pitch. espeak-ng sets both
itself; flite and festival voices are shifted with sox (tempo, pitch) after synthesis.
"""
import dataclasses
import os
import subprocess
import tempfile


@dataclasses.dataclass(frozen=True)
class Speaker:
    spk_id: str
    engine: str   # espeak | flite | festival
    voice: str    # engine's voice name (espeak: "accent+variant")
    rate: float   # espeak: words per minute; others: tempo factor
    pitch: float  # espeak: 0-99; others: shift in cents

    def describe(self):
        return f"{self.spk_id}\t{self.engine}\t{self.voice}\t{self.rate:g}\t{self.pitch:g}"


ENGINE_TOOLS = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}


def _run(cmd, what, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd[:3])} ...): {r.stderr.decode(errors='replace')[-400:]}")


def _finish(raw, out, spk):
    """Resample to 16 kHz mono 16-bit (and shift tempo/pitch for flite/festival), atomically."""
    tmp = out + ".tmp.wav"
    effects = []
    if spk.engine != "espeak":
        if abs(spk.rate - 1.0) > 1e-6:
            effects += ["tempo", "-s", f"{spk.rate:g}"]
        if abs(spk.pitch) > 1e-6:
            effects += ["pitch", f"{spk.pitch:g}"]
    _run(["sox", "-q", raw, "-r", "16000", "-b", "16", "-c", "1", "-e", "signed-integer", tmp] + effects
         + ["rate", "16k"], f"sox on {raw}")
    os.replace(tmp, out)


def synthesise(spk, items, workdir):
    """items: list of (utt_id, text, out_wav). Skips outputs that already exist (resume)."""
    todo = [it for it in items if not os.path.exists(it[2])]
    if not todo:
        return 0
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        raws = [os.path.join(tmp, f"{u}.wav") for u, _, _ in todo]
        if spk.engine == "espeak":
            for (u, text, _), raw in zip(todo, raws):
                _run(["espeak-ng", "-v", spk.voice, "-s", str(int(spk.rate)), "-p", str(int(spk.pitch)),
                      "-w", raw, text], f"espeak-ng for {u}")
        elif spk.engine == "flite":
            for (u, text, _), raw in zip(todo, raws):
                _run(["flite", "-voice", spk.voice, "-t", text, "-o", raw], f"flite for {u}")
        elif spk.engine == "festival":
            script = os.path.join(tmp, "batch.scm")
            with open(script, "w") as f:
                f.write(f"(voice_{spk.voice})\n")
                for (u, text, _), raw in zip(todo, raws):
                    f.write(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{raw}" \'riff)\n')
            _run(["festival", "-b", script], f"festival batch for {spk.spk_id}")
        else:
            raise ValueError(f"unknown TTS engine {spk.engine!r}")
        for (u, _, out), raw in zip(todo, raws):
            if not os.path.exists(raw):
                raise RuntimeError(f"{spk.engine} produced no audio for {u}")
            _finish(raw, out, spk)
    return len(todo)
