"""The rescoring's decoder call with the source attention's keys and values made once per utterance
(mpq_plugins.espnet.shared_memory): the same output as ESPnet's decoder on the repeated memory, float or
quantized, the model left as it was, and other decoders called as they are."""
import pytest
import torch

from mpq_plugins.espnet.groups import CONFORMER
from mpq_plugins.espnet.shared_memory import SharedSourceAttention, decode_shared, supported
from mpq_plugins.quant.config import quantize_
from tests.fixtures import tiny_asr_model


def hypotheses(model, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = [torch.randint(3, model.vocab_size - 2, (n,), generator=g) for n in lens]
    ys_in = torch.nn.utils.rnn.pad_sequence([torch.cat([torch.tensor([model.sos]), y]) for y in ys],
                                            batch_first=True, padding_value=model.eos)
    return ys_in, torch.tensor([n + 1 for n in lens])


@pytest.mark.parametrize("quantized", [False, True])
def test_shared_keys_and_values_give_the_decoders_own_output(quantized):
    torch.manual_seed(0)
    model = tiny_asr_model()
    if quantized:
        quantize_(model, {"weight_bits": 4}, CONFORMER)
    model.eval()
    memory = torch.randn(3, 17, model.decoder.decoders[0].size)
    memory_lens = torch.tensor([17, 11, 6])
    index = torch.tensor([0, 0, 2, 1, 1, 1, 2])                      # hypotheses of three utterances, any order
    ys_in, ys_lens = hypotheses(model, [5, 3, 7, 1, 4, 6, 2])
    with torch.no_grad():
        want = model.decoder(memory[index], memory_lens[index], ys_in, ys_lens)[0]
    got = decode_shared(model.decoder, memory, memory_lens, index, ys_in, ys_lens)
    assert got.shape == want.shape
    for i, n in enumerate(ys_lens.tolist()):                          # every real position (not the padding)
        assert torch.allclose(got[i, :n], want[i, :n], atol=1e-5), i


def test_the_decoder_is_left_as_it_was_even_after_an_error():
    model = tiny_asr_model().eval()
    before = [layer.src_attn for layer in model.decoder.decoders]
    memory = torch.randn(2, 9, model.decoder.decoders[0].size)
    ys_in, ys_lens = hypotheses(model, [3, 4])
    decode_shared(model.decoder, memory, torch.tensor([9, 5]), torch.tensor([1, 0]), ys_in, ys_lens)
    assert [layer.src_attn for layer in model.decoder.decoders] == before
    assert not any(isinstance(m, SharedSourceAttention) for m in model.modules())
    with pytest.raises(IndexError):                                   # an utterance index out of range
        decode_shared(model.decoder, memory, torch.tensor([9, 5]), torch.tensor([0, 5]), ys_in, ys_lens)
    assert [layer.src_attn for layer in model.decoder.decoders] == before


def test_other_attention_is_called_as_it_is():
    model = tiny_asr_model().eval()
    assert supported(model.decoder)
    model.decoder.decoders[-1].src_attn.use_sdpa = True              # ESPnet's sdpa path: not ours to replace
    assert not supported(model.decoder)
    memory = torch.randn(2, 9, model.decoder.decoders[0].size)
    index, ys = torch.tensor([0, 1, 1]), hypotheses(model, [2, 3, 4])
    with torch.no_grad():
        want = model.decoder(memory[index], torch.tensor([9, 7])[index], *ys)[0]
    got = decode_shared(model.decoder, memory, torch.tensor([9, 7]), index, *ys)
    assert torch.allclose(got, want, atol=1e-5)
