"""Teacher-forced decoding of many hypotheses of few utterances, with the source attention's keys and values
computed once per utterance.

Rescoring an n-best sends every hypothesis through the attention decoder with its utterance's encoder output
as the memory. ESPnet's decoder layers project that memory to keys and values for each hypothesis: with 10-30
hypotheses per utterance, the same projection is made 10-30 times. `decode_shared` gives each decoder layer a
source attention that projects the memory of each utterance once and indexes the result for its hypotheses;
everything else (embedding, self-attention, norms, feed-forward, output layer, masks) is ESPnet's own code.
Decoders whose layers do not have ESPnet's MultiHeadedAttention as `src_attn` are called as they are.
"""
import contextlib
import math

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention


class SharedSourceAttention(torch.nn.Module):
    """Stands in for one layer's `src_attn` during a call: keys and values of `memory` (utterances x frames x
    dim) are projected once; `index` maps each hypothesis of the batch to its utterance."""

    def __init__(self, att, memory, index):
        super().__init__()
        self.att, self.index = att, index
        n, t, _ = memory.shape
        k = att.linear_k(memory).view(n, t, att.h, att.d_k).transpose(1, 2)
        v = att.linear_v(memory).view(n, t, att.h, att.d_k).transpose(1, 2)
        self.k, self.v = att.k_norm(k), v

    def forward(self, query, key, value, mask, expand_kv=False):
        att = self.att
        n = query.size(0)
        q = att.q_norm(att.linear_q(query).view(n, -1, att.h, att.d_k).transpose(1, 2))
        k, v = self.k[self.index], self.v[self.index]
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(att.d_k)
        return att.forward_attention(v, scores, mask)


def supported(decoder):
    """Whether every layer's source attention is one `SharedSourceAttention` can stand in for (plain
    MultiHeadedAttention: not the sdpa or flash-attention paths)."""
    layers = getattr(decoder, "decoders", None)
    return bool(layers) and all(
        type(getattr(layer, "src_attn", None)) is MultiHeadedAttention
        and not getattr(layer.src_attn, "use_sdpa", False) and not getattr(layer.src_attn, "use_flash_attn", False)
        for layer in layers)


@contextlib.contextmanager
def _shared_source(decoder, memory, index):
    saved = [layer.src_attn for layer in decoder.decoders]
    try:
        for layer, att in zip(decoder.decoders, saved):
            layer.src_attn = SharedSourceAttention(att, memory, index)
        yield
    finally:
        for layer, att in zip(decoder.decoders, saved):
            layer.src_attn = att


@torch.no_grad()
def decode_shared(decoder, memory, memory_lens, index, ys_in, ys_in_lens):
    """The decoder's output (hypotheses x tokens x vocabulary) for hypotheses `ys_in` (padded, with lengths)
    of the utterances `index` (a long tensor, one entry per hypothesis) of `memory` (utterances x frames x dim,
    with lengths): the same as decoder(memory[index], memory_lens[index], ys_in, ys_in_lens)."""
    if not supported(decoder):
        return decoder(memory[index], memory_lens[index], ys_in, ys_in_lens)[0]
    # the memory tensor the layers see still has one row per hypothesis (its shape and mask are what the
    # layer's other code uses), but an expanded view of nothing: only SharedSourceAttention reads it
    stand_in = memory.new_zeros(1, memory.size(1), memory.size(2)).expand(len(index), -1, -1)
    with _shared_source(decoder, memory, index):
        return decoder(stand_in, memory_lens[index], ys_in, ys_in_lens)[0]
