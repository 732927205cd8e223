"""The fast decoder: a C++ CTC beam search, then attention rescoring of its n-best in one batched pass.

1. Utterances go through the encoder in batches (sorted by length, `batch_seconds` of audio each). As in
   ESPnet's batched decoding, the Conformer's convolutions see the zero padding near an utterance's end,
   so a score in a batch differs a little from the same utterance alone.
2. torchaudio's `ctc_decoder` (flashlight-text, C++) searches the CTC posteriors of each utterance:
   - `search: lexicon`: only words of the lexicon, scored by the word n-gram (an ARPA file read by
     KenLM), `word_score` added per word;
   - `search: ctc`: over tokens, no lexicon and no LM (the acoustic decode).
3. Its n-best (`rescore_nbest` distinct word sequences) is scored again, all utterances of the batch at
   once: exact CTC log-likelihood (torch's CTC loss) and the attention decoder's log-likelihood
   (teacher-forced, one decoder call; the source attention projects each utterance's encoder output once,
   not once per hypothesis: shared_memory.py), combined as ESPnet's joint decoding weighs them:
       (1 - ctc_weight) * log P_att(y|x) + ctc_weight * log P_ctc(y|x) + word_lm_weight * ln P_lm(words)
       + word_score * len(words)
   and the best is the result. The LM and word scores are natural-log, in the first pass too
   (KenLM's log10 scores are scaled by ln 10 there).

A lexicon is a word per line (the words of the LM's vocabulary); spellings come from the model's own
tokenizer (characters, or sentencepiece pieces for BPE models), so a word with a letter outside the
token list is an error naming the file and line.
"""
import math
import os
import tempfile

import torch
import torch.nn.functional as F
from espnet2.text.build_tokenizer import build_tokenizer
from espnet2.text.token_id_converter import TokenIDConverter

from mpq_plugins.datadir import DataDirError, read_lines
from mpq_plugins.espnet.shared_memory import decode_shared

SEARCHES = ("lexicon", "ctc")
TUNABLE = ("word_lm_weight", "word_score", "ctc_weight")   # the weights tuned on dev (`tune:` of a decoding config)
BLANK, SPACE, UNK = "<blank>", "<space>", "<unk>"
IMPOSSIBLE = -1.0e9   # the CTC log-likelihood of a sequence no alignment fits


class LexiconError(ValueError):
    pass


def _lines(path, what):
    """(line, line number) of a text file (strict UTF-8), its problems as LexiconError."""
    try:
        yield from read_lines(path)
    except DataDirError as e:
        raise LexiconError(str(e)) from None
    except OSError as e:
        raise LexiconError(f"cannot read {what} {path}: {e.strerror}") from None


def read_lexicon(path):
    """The words of a lexicon file (the first field of each line), in file order, without repeats."""
    words, seen = [], set()
    for line, n in _lines(path, "lexicon"):
        parts = line.split()
        if not parts:
            continue
        if parts[0] in seen:
            raise LexiconError(f"{path}:{n}: word {parts[0]!r} is listed twice")
        seen.add(parts[0])
        words.append((n, parts[0]))
    if not words:
        raise LexiconError(f"{path}: no words")
    return words


def arpa_words(path):
    """The unigrams of an ARPA file (without <s>, </s> and <unk>)."""
    words, in_unigrams = set(), False
    for line, n in _lines(path, "ARPA file"):
        s = line.strip()
        if s.startswith("\\"):
            if in_unigrams:
                break
            in_unigrams = s == "\\1-grams:"
            continue
        if in_unigrams and s:
            parts = s.split()
            if len(parts) < 2:
                raise LexiconError(f"{path}:{n}: bad unigram line {s!r}")
            words.add(parts[1])
    if not words:
        raise LexiconError(f"{path}: not an ARPA file (no \\1-grams: section)")
    return words - {"<s>", "</s>", UNK}


def combine(components, opts):
    """The rescoring score of each candidate: ESPnet's CTC/attention weighting plus the LM and word scores
    (both 0 without a lexicon search)."""
    w = opts["ctc_weight"]
    acoustic = (1.0 - w) * components["att"] + w * components["ctc"]
    if opts["search"] != "lexicon":
        return acoustic
    return acoustic + opts["word_lm_weight"] * components["lm"] + opts["word_score"] * components["words"]


def best_words(cands, scores, n_utts):
    """The text of each utterance's best-scoring candidate (cands: [(utterance, words)], scores: theirs)."""
    best = {}
    for (b, words), sc in zip(cands, scores.tolist()):
        if b not in best or sc > best[b][0]:
            best[b] = (sc, words)
    return [" ".join(best[b][1]) if b in best else "" for b in range(n_utts)]


def tune(rec, batches, refs, grid, log=print):
    """Grid search of the weights on a held-out set: batches, [(keys, waveforms)]; refs, {key: words};
    grid, {option: [values]} over TUNABLE. Each first pass (word_lm_weight, word_score) runs once over the
    encoded set; ctc_weight only reweighs its candidates. Returns (rows, best): rows, [(values, errors,
    words)] in grid order; best, the values with the fewest word errors (the earliest on a tie)."""
    import itertools
    import jiwer
    opts = rec.opts
    axes = {k: list(grid.get(k, [opts[k]])) for k in TUNABLE}
    encoded = [(keys, rec.encode(wavs)) for keys, wavs in batches]
    ref = [" ".join(refs[k]) for keys, _ in encoded for k in keys]
    n_words = sum(len(refs[k]) for keys, _ in encoded for k in keys)
    rows = []
    for lm_w, ws in itertools.product(axes["word_lm_weight"], axes["word_score"]):
        dec = rec.decoder_with(lm_w, ws) if opts["search"] == "lexicon" else rec.decoder
        parts = []
        for keys, (enc, enc_lens, logp) in encoded:
            cands = rec.first_pass(logp, enc_lens, dec)
            parts.append((keys, cands, rec.components(enc, enc_lens, logp, cands)))
        for cw in axes["ctc_weight"]:
            values = {"word_lm_weight": lm_w, "word_score": ws, "ctc_weight": cw}
            hyp = [h for keys, cands, comp in parts for h in best_words(cands, combine(comp, {**opts, **values}), len(keys))]
            out = jiwer.process_words(ref, hyp)
            errors = out.substitutions + out.deletions + out.insertions
            rows.append((values, errors, n_words))
            log(f"tune: {values}: {errors} errors in {n_words} words ({100 * errors / max(n_words, 1):.2f}% WER)")
    best = min(rows, key=lambda r: r[1])[0]
    return rows, best


class CTCRescoringRecognizer:
    """model: an ESPnet ASR model (eval mode); conf: its config; opts: read_decode_config's options."""

    def __init__(self, model, conf, opts, lexicon_file=None, arpa_file=None, device="cpu"):
        self.model, self.opts, self.device = model, opts, device
        self.tokens = list(model.token_list)
        if opts["search"] not in SEARCHES:
            raise ValueError(f"search {opts['search']!r} is not one of {', '.join(SEARCHES)}")
        if BLANK not in self.tokens:
            raise ValueError(f"the fast decoder needs a CTC blank {BLANK} in the token list; use search: espnet")
        self.blank = self.tokens.index(BLANK)
        # the search's word boundary: <space> of character tokens; BPE pieces and words carry their own
        # boundaries, and the blank stands in (flashlight treats a silence equal to the blank as no token)
        self.sil = SPACE if SPACE in self.tokens else BLANK
        self.tokenizer = build_tokenizer(token_type=conf.get("token_type", "char"), bpemodel=conf.get("bpemodel"))
        self.converter = TokenIDConverter(token_list=self.tokens)
        self.lm = None
        self._tmp = tempfile.TemporaryDirectory()
        lexicon = None
        if opts["search"] == "lexicon":
            if not lexicon_file or not arpa_file:
                raise ValueError("search: lexicon needs a lexicon and an ARPA word LM (--lexicon_file, --arpa_file; "
                                 "run.sh's --lm ngram writes them): without them decode with search: ctc "
                                 "(conf/decode_acoustic.yaml) or search: espnet (conf/decode_espnet.yaml)")
            lexicon = self._write_lexicon(lexicon_file, arpa_file)
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import create_word_dict, load_words
            self.word_dict = create_word_dict(load_words(lexicon))   # the decoder's own word indices
            self.lm = KenLM(arpa_file, self.word_dict)
        self._lexicon = lexicon
        self.decoder = self.decoder_with(opts["word_lm_weight"], opts["word_score"])

    def _write_lexicon(self, lexicon_file, arpa_file):
        """The lexicon with each word spelt in the model's tokens, as torchaudio reads it."""
        words = read_lexicon(lexicon_file)
        known = arpa_words(arpa_file)
        missing = [w for _, w in words if w not in known]
        if missing:
            raise LexiconError(f"{lexicon_file}: {len(missing)} words are not in the ARPA file {arpa_file} "
                               f"(e.g. {missing[0]!r}): the lexicon and the LM must have one vocabulary")
        extra = sorted(known - {w for _, w in words})
        if extra:
            raise LexiconError(f"{arpa_file}: {len(extra)} words are not in the lexicon {lexicon_file} "
                               f"(e.g. {extra[0]!r}): the lexicon and the LM must have one vocabulary")
        path = os.path.join(self._tmp.name, "lexicon.txt")
        index = set(self.tokens)
        with open(path, "w", encoding="utf-8") as f:
            for n, w in words:
                spelling = self.tokenizer.text2tokens(w)
                bad = [t for t in spelling if t not in index or t in (BLANK, SPACE, UNK)]
                if bad:
                    raise LexiconError(f"{lexicon_file}:{n}: word {w!r} has {bad[0]!r}, which is not in the "
                                       "model's token list")
                f.write(f"{w} {' '.join(spelling)}\n")
        return path

    def _token_ids(self, words):
        return self.converter.tokens2ids(self.tokenizer.text2tokens(" ".join(words)))

    @torch.no_grad()
    def encode(self, speeches):
        """(encoder output, its lengths, CTC log-posteriors) of a batch of 1-D waveforms."""
        x = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(s, dtype=torch.float32) for s in speeches],
                                            batch_first=True).to(self.device)
        lengths = torch.tensor([len(s) for s in speeches], device=self.device)
        enc, enc_lens = self.model.encode(x, lengths)
        return enc, enc_lens, self.model.ctc.log_softmax(enc)

    def first_pass(self, logp, enc_lens, decoder=None):
        """[(utterance, words)]: the distinct word sequences of each utterance's n-best from the C++ search
        (the empty sequence when the search found nothing)."""
        cands = []
        for b, hyps in enumerate((decoder or self.decoder)(logp.float().cpu().contiguous(), enc_lens.cpu().int())):
            seen = set()
            for h in hyps:
                words = tuple(h.words) if self.lm is not None else self._words_of(h.tokens)
                if words not in seen:
                    seen.add(words)
                    cands.append((b, words))
            if not seen:
                cands.append((b, ()))
        return cands

    def decoder_with(self, word_lm_weight, word_score):
        """The C++ search with other LM and word weights (the tuning's first passes)."""
        from torchaudio.models.decoder import ctc_decoder
        return ctc_decoder(
            lexicon=self._lexicon, tokens=self.tokens, lm=self.lm, nbest=self.opts["rescore_nbest"],
            beam_size=self.opts["beam_size"], beam_threshold=self.opts["beam_threshold"],
            lm_weight=word_lm_weight * math.log(10), word_score=word_score,
            blank_token=BLANK, sil_token=self.sil, unk_word=UNK)

    @torch.no_grad()
    def __call__(self, speeches):
        """For a list of 1-D waveforms, a list of n-best lists of (text, tokens, score), best first."""
        enc, enc_lens, logp = self.encode(speeches)
        cands = self.first_pass(logp, enc_lens)
        scores = combine(self.components(enc, enc_lens, logp, cands), self.opts)
        out = [[] for _ in speeches]
        for (b, words), s in zip(cands, scores.tolist()):
            out[b].append((" ".join(words), self.tokenizer.text2tokens(" ".join(words)), s))
        for n in out:
            n.sort(key=lambda r: -r[2])
        return [n[: self.opts["nbest"]] for n in out]

    def _words_of(self, token_ids):
        ids = [int(t) for t in token_ids if int(t) != self.blank]
        return tuple(self.tokenizer.tokens2text(self.converter.ids2tokens(ids)).split())

    @torch.no_grad()
    def components(self, enc, enc_lens, logp, cands):
        """{"ctc", "att", "lm", "words"}: a tensor of each candidate's scores, which `combine` weighs."""
        m = self.model
        idx = torch.tensor([b for b, _ in cands], device=enc.device)
        ys = [torch.tensor(self._token_ids(w), dtype=torch.long) for _, w in cands]
        ylens = torch.tensor([len(y) for y in ys])
        # CTC: log P(y|x) summed over every alignment
        targets = torch.cat(ys) if int(ylens.sum()) else torch.zeros(0, dtype=torch.long)
        ctc = -F.ctc_loss(logp[idx].transpose(0, 1).float(), targets.to(enc.device), enc_lens[idx],
                          ylens.to(enc.device), blank=self.blank, reduction="none")
        ctc = ctc.clamp(min=IMPOSSIBLE)   # more tokens than frames allow: never chosen (not 0, as zero_infinity would)
        if m.decoder is None:   # a CTC model: its CTC score stands in for the attention one, so any weighing is CTC
            return {"ctc": ctc.cpu(), "att": ctc.cpu(), "lm": self._lm_scores(cands),
                    "words": torch.tensor([float(len(w)) for _, w in cands])}
        # attention: teacher-forced <sos> y -> y <eos>, every candidate in one decoder call
        ys_in = torch.nn.utils.rnn.pad_sequence([torch.cat([torch.tensor([m.sos]), y]) for y in ys],
                                                batch_first=True, padding_value=m.eos).to(enc.device)
        ys_out = torch.nn.utils.rnn.pad_sequence([torch.cat([y, torch.tensor([m.eos])]) for y in ys],
                                                 batch_first=True, padding_value=-1).to(enc.device)
        dec = decode_shared(m.decoder, enc, enc_lens, idx, ys_in, (ylens + 1).to(enc.device))
        lp = torch.log_softmax(dec.float(), dim=-1)
        att = (lp.gather(-1, ys_out.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (ys_out >= 0)).sum(-1)
        return {"ctc": ctc.cpu(), "att": att.cpu(), "lm": self._lm_scores(cands),
                "words": torch.tensor([float(len(w)) for _, w in cands])}

    def _lm_scores(self, cands):
        return torch.tensor([self._lm_score(w) for _, w in cands] if self.lm is not None else [0.0] * len(cands))

    def _lm_score(self, words):
        """Natural-log probability of the sentence under the ARPA LM (KenLM scores are log10)."""
        state, total = self.lm.start(False), 0.0
        for w in words:
            state, s = self.lm.score(state, self.word_dict.get_index(w))
            total += s
        return (total + self.lm.finish(state)[1]) * math.log(10)
