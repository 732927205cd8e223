"""ESPnet decoding glue: a word-LM scorer for ESPnet's beam search, and the recogniser that uses both.

`WordLMScorer` is an ESPnet batch scorer over character tokens. Its state is the word history
and the letters of the word being spelt. Each letter scores the change of the look-ahead (the
best word-LM log-probability among the vocabulary words that start with the spelt prefix); a
space or the end of the sentence closes the word and scores its exact log-probability. Summed
over a word, the scores give log P(word | history), so the search ranks sentences by the word
LM, and a spelling that is no vocabulary word's prefix gets `NEG` and drops out of the beam.
"""
import numpy as np
import torch
from espnet.nets.scorer_interface import BatchScorerInterface

from mpq_plugins.wordlm import NgramLM

NEG = -1.0e4   # score of a token that leaves the lexicon (finite: sums of scores stay finite)


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
    and loaded ourselves (float, quantized or packed: mpq_plugins.espnet_task.load_asr_model).

    opts: the decoding options of mpq_plugins.bin.asr_inference (beam_size, ctc_weight, ...).
    word_lm: an NgramLM (char tokens); rnn_lm: an ESPnet LM module (its .lm scorer is used).
    """

    def __init__(self, model, conf, opts, word_lm=None, rnn_lm=None, device="cpu"):
        from espnet.nets.batch_beam_search import BatchBeamSearch
        from espnet.nets.scorers.ctc import CTCPrefixScorer
        from espnet.nets.scorers.length_bonus import LengthBonus
        from espnet2.text.build_tokenizer import build_tokenizer
        from espnet2.text.token_id_converter import TokenIDConverter

        self.model, self.opts, self.device = model, opts, device
        tokens = list(model.token_list)
        scorers = {"decoder": model.decoder, "ctc": CTCPrefixScorer(ctc=model.ctc, eos=model.eos),
                   "length_bonus": LengthBonus(len(tokens))}
        weights = {"decoder": 1.0 - opts["ctc_weight"], "ctc": opts["ctc_weight"], "length_bonus": opts["penalty"]}
        if rnn_lm is not None:
            scorers["lm"], weights["lm"] = rnn_lm.lm, opts["lm_weight"]
        if word_lm is not None:
            scorers["wordlm"], weights["wordlm"] = WordLMScorer(word_lm, tokens, model.eos), opts["word_lm_weight"]
        self.beam_search = BatchBeamSearch(
            scorers=scorers, weights=weights, beam_size=opts["beam_size"], vocab_size=len(tokens),
            sos=model.sos, eos=model.eos, token_list=tokens,
            pre_beam_score_key=None if opts["ctc_weight"] == 1.0 else "full",
            normalize_length=opts["normalize_length"]).to(device).eval()
        self.converter = TokenIDConverter(token_list=tokens)
        self.tokenizer = build_tokenizer(token_type=conf.get("token_type", "char"), bpemodel=conf.get("bpemodel"))

    @torch.no_grad()
    def __call__(self, speech):
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
