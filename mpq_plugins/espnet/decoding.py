"""Decoding with ESPnet's beam search over models we load ourselves (float, quantized or packed),
with our word-LM scorer; `decode_datadir` is what mpq_plugins.bin.asr_inference runs.

`WordLMScorer` is an ESPnet batch scorer over character tokens. Its state is the word history
and the letters of the word being spelt. Each letter scores the change of the look-ahead (the
best word-LM log-probability among the vocabulary words that start with the spelt prefix); a
space or the end of the sentence closes the word and scores its exact log-probability. Summed
over a word, the scores give log P(word | history), so the search ranks sentences by the word
LM, and a spelling that is no vocabulary word's prefix gets `NEG` and drops out of the beam.
"""
import time

import numpy as np
import soundfile
import torch
import yaml
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.scorer_interface import BatchScorerInterface
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.tasks.asr import ASRTask
from espnet2.text.build_tokenizer import build_tokenizer
from espnet2.text.token_id_converter import TokenIDConverter
from espnet2.train.collate_fn import CommonCollateFn

from mpq_plugins.datadir import read_table
from mpq_plugins.espnet.ctc_search import SEARCHES as CTC_SEARCHES
from mpq_plugins.espnet.ctc_search import TUNABLE as CTC_TUNABLE
from mpq_plugins.espnet.load import load_asr_model, load_lm
from mpq_plugins.espnet.wordlm import NgramLM
from mpq_plugins.quant.serve import ENGINES, to_int8_serving

NEG = -1.0e4   # score of a token that leaves the lexicon (finite: sums of scores stay finite)
SEARCHES = ("espnet",) + CTC_SEARCHES
DECODE_OPTIONS = {   # yaml key of a decoding config: (type, default)
    "search": (str, "espnet"),          # espnet: ESPnet's joint beam search; lexicon, ctc: mpq_plugins.espnet.ctc_search
    "beam_size": (int, 10), "ctc_weight": (float, 0.5), "lm_weight": (float, 0.5),
    "word_lm_weight": (float, 1.0), "penalty": (float, 0.0), "nbest": (int, 1),
    "maxlenratio": (float, 0.0), "minlenratio": (float, 0.0), "normalize_length": (bool, False),
    # the C++ CTC search (search: lexicon or ctc)
    "rescore_nbest": (int, 10), "word_score": (float, 0.0), "beam_threshold": (float, 25.0),
    "batch_seconds": (float, 60.0),
    "tune": (dict, {}),                 # {option: [values]} over ctc_search.TUNABLE: mpq_plugins.bin.tune_decoding
    # how the model's quantized layers run (serve_model): float (the fake-quantized model: exactly the packed
    # file's hypotheses) or int8 (CPU int8 kernels, mpq_plugins.quant.serve: faster, hypotheses may differ a little)
    "serve": (str, "float"), "int8_engine": (str, "auto"),
    "int8_calibration": (str, ""),      # a wav.scp whose first utterances calibrate the static int8 subsampling
    "int8_calibration_utts": (int, 20),  # ("": the subsampling's second conv on dynamic int8 kernels instead)
}
POSITIVE = ("beam_size", "nbest", "rescore_nbest", "beam_threshold", "batch_seconds", "int8_calibration_utts")
SERVES = ("float", "int8")


def read_decode_config(path):
    """The decoding options of a yaml file (DECODE_OPTIONS); an unknown key is an error, not an ignored line."""
    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read decoding config {path}: {e}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: expected a mapping of decoding options")
    unknown = sorted(set(conf) - set(DECODE_OPTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown decoding option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(DECODE_OPTIONS)})")
    out = {k: d for k, (_, d) in DECODE_OPTIONS.items()}
    for k, v in conf.items():
        typ = DECODE_OPTIONS[k][0]
        try:
            if typ is dict and not isinstance(v, dict):
                raise TypeError
            out[k] = typ(v) if typ is not bool else bool(v)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {k}: {v!r} is not a {typ.__name__}") from None
    for k, values in out["tune"].items():
        if k not in CTC_TUNABLE:
            raise ValueError(f"{path}: tune: {k} cannot be tuned (tunable: {', '.join(CTC_TUNABLE)})")
        if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"{path}: tune: {k}: expected a list of numbers, got {values!r}")
    if out["search"] not in SEARCHES:
        raise ValueError(f"{path}: search: {out['search']!r} is not one of {', '.join(SEARCHES)}")
    if out["serve"] not in SERVES:
        raise ValueError(f"{path}: serve: {out['serve']!r} is not one of {', '.join(SERVES)}")
    if out["int8_engine"] not in ENGINES:
        raise ValueError(f"{path}: int8_engine: {out['int8_engine']!r} is not one of {', '.join(ENGINES)}")
    for k in POSITIVE:
        if not out[k] > 0:
            raise ValueError(f"{path}: {k}: {out[k]} must be positive")
    if not 0.0 <= out["ctc_weight"] <= 1.0:
        raise ValueError(f"{path}: ctc_weight: {out['ctc_weight']} is not within 0..1")
    return out


class WordState:
    """Word history (the last order-1 words) and the letters of the current word."""
    __slots__ = ("hist", "prefix")

    def __init__(self, hist=(), prefix=""):
        self.hist, self.prefix = hist, prefix


class WordLMScorer(BatchScorerInterface):
    def __init__(self, lm: NgramLM, token_list, eos: int):
        self.lm = lm
        self.n_vocab = len(token_list)
        self.eos = eos
        self.space = token_list.index("<space>") if "<space>" in token_list else None
        if self.space is None:
            raise ValueError("the word LM needs character tokens with <space> between words")
        self.letters = {i: t for i, t in enumerate(token_list)
                        if len(t) == 1 and i not in (self.space, eos)}
        self._scores = {}

    def init_state(self, x):
        return None

    def select_state(self, state, i, new_id=None):
        return state[i] if isinstance(state, list) else state

    def _advance(self, state, token):
        if token == self.space:
            keep = self.lm.order - 1
            return WordState((state.hist + (state.prefix,))[-keep:] if keep else (), "")
        return WordState(state.hist, state.prefix + self.letters.get(token, "\0"))

    def _lookahead(self, lp, prefix):
        if not prefix:
            return 0.0
        lo, hi = self.lm.prefix_range(prefix)
        return float(lp[lo:hi].max()) if hi > lo else NEG

    def _score_vector(self, state):
        key = (state.hist, state.prefix)
        if key in self._scores:
            return self._scores[key]
        lm, p = self.lm, state.prefix
        lp = lm.logprobs(state.hist)
        base = self._lookahead(lp, p)
        s = np.full(self.n_vocab, NEG, dtype=np.float32)
        if base > NEG:
            for i, c in self.letters.items():
                la = self._lookahead(lp, p + c)
                if la > NEG:
                    s[i] = la - base
            if p and lm.is_word(p):
                close = lp[lm.index[p]] - base
                s[self.space] = close
                s[self.eos] = close + lm.logprobs(state.hist + (p,))[lm.eos]
        out = torch.from_numpy(s)
        if len(self._scores) > 100000:
            self._scores.clear()
        self._scores[key] = out
        return out

    def score(self, y, state, x):
        state = WordState() if state is None else self._advance(state, int(y[-1]))
        return self._score_vector(state), state

    def batch_score(self, ys, states, xs):
        out = [self.score(y, s, None) for y, s in zip(ys, states)]
        return torch.stack([o[0] for o in out]).to(xs.dtype), [o[1] for o in out]


class Recognizer:
    """Joint CTC/attention beam search (ESPnet's BatchBeamSearch and scorers) over a model we built
    and loaded ourselves (float, quantized or packed: mpq_plugins.espnet.load.load_asr_model).

    opts: the decoding options (read_decode_config: beam_size, ctc_weight, ...).
    word_lm: an NgramLM (char tokens); rnn_lm: an ESPnet LM module (its .lm scorer is used).
    """

    def __init__(self, model, conf, opts, word_lm=None, rnn_lm=None, device="cpu"):
        self.model, self.opts, self.device = model, opts, device
        tokens = list(model.token_list)
        ctc_weight = opts["ctc_weight"] if model.decoder is not None else 1.0   # a CTC model: CTC alone
        scorers = {"ctc": CTCPrefixScorer(ctc=model.ctc, eos=model.eos), "length_bonus": LengthBonus(len(tokens))}
        weights = {"ctc": ctc_weight, "length_bonus": opts["penalty"]}
        if model.decoder is not None:
            scorers["decoder"], weights["decoder"] = model.decoder, 1.0 - ctc_weight
        if rnn_lm is not None:
            scorers["lm"], weights["lm"] = rnn_lm.lm, opts["lm_weight"]
        if word_lm is not None:
            scorers["wordlm"], weights["wordlm"] = WordLMScorer(word_lm, tokens, model.eos), opts["word_lm_weight"]
        self.beam_search = BatchBeamSearch(
            scorers=scorers, weights=weights, beam_size=opts["beam_size"], vocab_size=len(tokens),
            sos=model.sos, eos=model.eos, token_list=tokens,
            pre_beam_score_key=None if ctc_weight == 1.0 else "full",
            normalize_length=opts["normalize_length"]).to(device).eval()
        self.converter = TokenIDConverter(token_list=tokens)
        self.tokenizer = build_tokenizer(token_type=conf.get("token_type", "char"), bpemodel=conf.get("bpemodel"))

    def __call__(self, speeches):
        """For a list of 1-D waveforms, a list of n-best lists of (text, tokens, score), best first."""
        return [[(text, toks, float(hyp.score)) for text, toks, hyp in self.decode(s)] for s in speeches]

    @torch.no_grad()
    def decode(self, speech):
        """n-best list of (text, tokens, hypothesis) for one utterance (1-D float waveform)."""
        speech = torch.as_tensor(speech, dtype=torch.float32).unsqueeze(0).to(self.device)
        lengths = torch.tensor([speech.size(1)], device=self.device)
        enc, _ = self.model.encode(speech, lengths)
        hyps = self.beam_search(x=enc[0], maxlenratio=self.opts["maxlenratio"], minlenratio=self.opts["minlenratio"])
        out = []
        for hyp in hyps[: self.opts["nbest"]]:
            ids = [int(t) for t in hyp.yseq[1:-1].tolist() if int(t) != 0]
            toks = self.converter.ids2tokens(ids)
            out.append((self.tokenizer.tokens2text(toks), toks, hyp))
        return out


def build_recognizer(asr_train_config, asr_model_file, opts, lm_train_config=None, lm_file=None,
                     word_lm_file=None, lexicon_file=None, arpa_file=None, device="cpu"):
    """Our model loader (strict, weights_only; float, quantized or packed) + the search of opts["search"]:
    ESPnet's joint beam search (Recognizer) or the C++ CTC search with attention rescoring."""
    model, conf = load_asr_model(asr_train_config, asr_model_file, device)
    served = serve_model(model, opts, device)
    if opts["search"] != "espnet":
        from mpq_plugins.espnet.ctc_search import CTCRescoringRecognizer
        rec = CTCRescoringRecognizer(model, conf, opts, lexicon_file, arpa_file, device)
    else:
        word_lm = NgramLM.load(word_lm_file) if word_lm_file else None
        rnn_lm = load_lm(lm_train_config, lm_file, device) if lm_train_config else None
        rec = Recognizer(model, conf, opts, word_lm=word_lm, rnn_lm=rnn_lm, device=device)
    rec.int8_layers = served      # the layers serve: int8 moved to int8 kernels
    return rec


def serve_model(model, opts, device="cpu"):
    """The model's quantized layers on the kernels of opts["serve"]: float (as loaded) or int8 (CPU only;
    the subsampling calibrated on the first int8_calibration_utts utterances of the int8_calibration
    wav.scp when one is given); returns the names of the layers moved to int8 kernels."""
    if opts["serve"] == "float":
        return []
    if str(device) != "cpu":
        raise ValueError(f"serve: int8 runs on CPU kernels; this decode runs on {device}")
    calibration = None
    if opts["int8_calibration"]:
        path = opts["int8_calibration"]
        try:
            rows = read_table(path)[: opts["int8_calibration_utts"]]
            audio = [soundfile.read(p.strip(), dtype="float32")[0] for _, p, _ in rows]
        except Exception as e:
            raise ValueError(f"int8_calibration: {path}: cannot read its audio ({e})") from None
        if not audio:
            raise ValueError(f"int8_calibration: {path}: no utterance")
        calibration = lambda: [model.encode(torch.from_numpy(a)[None], torch.tensor([len(a)])) for a in audio]  # noqa
    with torch.no_grad():
        return to_int8_serving(model.eval(), calibration=calibration, engine=opts["int8_engine"])


def read_batches(data_path_and_name_and_type, key_file=None, seconds=0.0, fs=16000, chunk=256):
    """(keys, waveforms) batches of at most `seconds` of audio (one utterance at least) from a wav.scp
    ("path,name,type"; the utterances of key_file), each read chunk of utterances sorted by length
    first, so that a batch pads little."""
    path, name, typ = data_path_and_name_and_type.split(",")
    # speech only: ESPnet's training preprocessor leaves the waveform as it is read
    loader = ASRTask.build_streaming_iterator(
        [(path, name, typ)], dtype="float32", batch_size=1, key_file=key_file, num_workers=0,
        preprocess_fn=None, collate_fn=CommonCollateFn(float_pad_value=0.0, int_pad_value=-1), inference=True)

    def flush(utts):
        utts.sort(key=lambda u: len(u[1]))
        batch, total = [], 0
        for u in utts:
            if batch and total + len(u[1]) > seconds * fs:
                yield [k for k, _ in batch], [w for _, w in batch]
                batch, total = [], 0
            batch.append(u)
            total += len(u[1])
        if batch:
            yield [k for k, _ in batch], [w for _, w in batch]
    utts = []
    for keys, b in loader:
        utts.append((keys[0], b[name][0][: int(b[name + "_lengths"][0])]))
        if len(utts) == chunk:
            yield from flush(utts)
            utts = []
    yield from flush(utts)


def decode_datadir(rec, data_path_and_name_and_type, key_file, output_dir, log=print):
    """Decode the utterances of a wav.scp (those of key_file) into ESPnet's
    <output_dir>/<n>best_recog/{text,token,score}; returns the number of utterances."""
    seconds = rec.opts["batch_seconds"] if rec.opts["search"] != "espnet" else 0.0   # ESPnet's search: one by one
    t0, n, audio = time.time(), 0, 0.0
    with DatadirWriter(output_dir) as writer:
        for keys, speeches in read_batches(data_path_and_name_and_type, key_file, seconds):
            for key, speech, nbest in zip(keys, speeches, rec(speeches)):
                for i, (text, tokens, score) in enumerate(nbest, 1):
                    w = writer[f"{i}best_recog"]
                    w["text"][key] = text
                    w["token"][key] = " ".join(tokens)
                    w["score"][key] = f"{score:.4f}"
                if not nbest:
                    writer["1best_recog"]["text"][key] = ""
                n += 1
                audio += len(speech) / 16000
                if n % 50 == 0:
                    log(f"asr_inference: {n} utterances in {time.time() - t0:.0f}s")
    dt = time.time() - t0
    log(f"asr_inference: decoded {n} utterances ({audio:.0f} s of audio) in {dt:.1f}s, RTF {dt / max(audio, 1e-9):.4f}")
    return n
