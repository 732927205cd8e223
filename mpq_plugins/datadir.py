"""Kaldi-style data directories: reading, writing and validating wav.scp, text, utt2spk, spk2utt.

Every problem is reported as one line naming the file (and line) and what is wrong.
"""
import contextlib
import hashlib
import os
import re
import shutil


class DataDirError(Exception):
    pass


_KEY_VALUE = re.compile(r"([^ \t]*)[ \t]?(.*)", re.S)  # key, one space or tab, value


def read_lines(path):
    """Yield (line, line_no) of a text file, newline removed; strict UTF-8, so a stray byte is an
    error naming file:line instead of a UnicodeDecodeError (or, worse, a silently replaced character)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataDirError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            yield line.rstrip("\n"), n


def read_table(path):
    """Read "key value..." lines into a list of (key, value, line_no); strict UTF-8.

    The key ends at the first space or tab (Kaldi's rule); the value is the rest, stripped."""
    rows = []
    for line, n in read_lines(path):
        if not line.strip():
            raise DataDirError(f"{path}:{n}: empty line")
        key, value = _KEY_VALUE.fullmatch(line).groups()
        rows.append((key, value.strip(), n))
    return rows


def write_atomic(path, text):
    """Write a text file through a temporary file, so that a crash never leaves half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def file_digest(path):
    """The SHA-256 (hex) of a file's bytes, read a megabyte at a time: what a result depends on, by content
    rather than by modification time (which a fresh checkout or a copy changes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def built_dir(path):
    """Build a directory in <path>.tmp (yielded) and put it in place of path when the block ends: a crash
    or a kill leaves the earlier directory (or none), never a half-built one. The temporary directory of
    an earlier killed run is removed first, and the block's own on an error."""
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_datadir(path, utts):
    """utts: iterable of (utt_id, spk_id, wav_path, text). Written to a temp dir, then swapped in."""
    utts = sorted(utts)
    spk2utt = {}
    with built_dir(path) as tmp:
        with open(f"{tmp}/wav.scp", "w") as w, open(f"{tmp}/text", "w") as t, open(f"{tmp}/utt2spk", "w") as u:
            for utt, spk, wav, text in utts:
                w.write(f"{utt} {wav}\n")
                t.write(f"{utt} {text}\n")
                u.write(f"{utt} {spk}\n")
                spk2utt.setdefault(spk, []).append(utt)
        with open(f"{tmp}/spk2utt", "w") as s:
            for spk in sorted(spk2utt):
                s.write(f"{spk} {' '.join(spk2utt[spk])}\n")


def _audio_problem(spec, sample_rate=None, min_samples=0):
    """Return a description of what is wrong with one wav.scp entry, or None."""
    if spec.endswith("|"):
        return None  # a command; checked when it runs
    if not os.path.exists(spec):
        return f"audio file {spec} does not exist"
    try:
        import soundfile  # here, not at the top: validate_data_dir --no_audio runs without it
        info = soundfile.info(spec)
    except Exception as e:  # soundfile raises its own RuntimeError/LibsndfileError types
        return f"audio file {spec} is not readable audio ({str(e).splitlines()[0][:120]})"
    if info.frames == 0:
        return f"audio file {spec} holds no samples"
    if sample_rate and info.samplerate != sample_rate:
        return f"audio file {spec} is sampled at {info.samplerate} Hz, the recipe expects {sample_rate} Hz"
    if info.frames < min_samples:
        return (f"audio file {spec} holds {info.frames} samples, fewer than the {min_samples} the frontend's "
                "window and the convolutional subsampling need (truncated?)")
    return None


def validate_datadir(path, check_audio=True, sample_rate=None, min_samples=0):
    """Raise DataDirError listing every problem found; return the number of utterances. With check_audio,
    every audio file must be readable, at sample_rate (when given) and at least min_samples long."""
    problems = []
    tables = {}
    for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
        f = os.path.join(path, name)
        if not os.path.exists(f):
            problems.append(f"{f}: missing")
            continue
        try:
            tables[name] = read_table(f)
        except DataDirError as e:
            problems.append(str(e))
    for name, rows in tables.items():
        f = os.path.join(path, name)
        for (a, _, _), (b, _, n) in zip(rows, rows[1:]):
            if b <= a:
                problems.append(f"{f}:{n}: {'duplicate' if a == b else 'unsorted'} key {b} (export LC_ALL=C; sort)")
                break
        if name == "text":
            for k, v, n in rows:
                if not v:
                    problems.append(f"{f}:{n}: empty transcript for {k}")
        if name in ("wav.scp", "utt2spk", "spk2utt"):
            for k, v, n in rows:
                if not v:
                    problems.append(f"{f}:{n}: no value for {k}")
    if "wav.scp" in tables:
        wav_ids = {k for k, _, _ in tables["wav.scp"]}
        for name in ("text", "utt2spk"):
            if name in tables:
                f = os.path.join(path, name)
                for k, _, n in tables[name]:
                    if k not in wav_ids:
                        problems.append(f"{f}:{n}: utterance {k} has no audio in wav.scp")
                ids = {k for k, _, _ in tables[name]}
                for k, _, n in tables["wav.scp"]:
                    if k not in ids:
                        problems.append(f"{path}/wav.scp:{n}: utterance {k} has no entry in {name}")
        if check_audio:
            for k, v, n in tables["wav.scp"]:
                p = _audio_problem(v, sample_rate, min_samples)
                if p:
                    problems.append(f"{path}/wav.scp:{n}: {k}: {p}")
    if "utt2spk" in tables and "spk2utt" in tables:
        u2s = {k: v for k, v, _ in tables["utt2spk"]}
        from_spk = {}
        for spk, utts, n in tables["spk2utt"]:
            for u in utts.split():
                from_spk[u] = spk
        if from_spk != u2s:
            problems.append(f"{path}/spk2utt: does not match utt2spk (regenerate it from utt2spk)")
        for u, spk in u2s.items():
            if not u.startswith(spk):
                problems.append(f"{path}/utt2spk: utterance {u} is not prefixed by its speaker id {spk}")
                break
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataDirError(f"data dir {path} is invalid:\n  " + "\n  ".join(shown) + more)
    return len(tables["wav.scp"])
