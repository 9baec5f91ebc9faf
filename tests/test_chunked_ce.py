"""The chunked vocabulary head + cross-entropy (models/chunked_ce.py): the same loss and gradients
as the full logits, for the function and for every method with a vocabulary head."""

import pytest
import torch

from openvision2.models import ModelConfig, OpenVision2
from openvision2.models.cappa import CapPa, CapPaConfig
from openvision2.models.chunked_ce import vocab_nll
from openvision2.models.openvision1 import OpenVision1, OpenVision1Config

VOCAB = 97


def _loss_and_grads(chunk, hidden, weight, targets, mask):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    nll_sum, num_tokens = vocab_nll(hidden, weight, targets, mask, chunk)
    (nll_sum * 0.37).backward()  # a scale other than 1, as the loop's loss weight and token mean apply
    return nll_sum.detach(), num_tokens, hidden.grad, weight.grad


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_chunked_equals_full_logits_in_fp32(chunk):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 11, 24, generator=g), torch.randn(VOCAB, 24, generator=g) * 0.3
    targets = torch.randint(0, VOCAB, (3, 11), generator=g)
    mask = torch.rand(3, 11, generator=g) > 0.3
    full = _loss_and_grads(0, hidden, weight, targets, mask)
    chunked = _loss_and_grads(chunk, hidden, weight, targets, mask)
    assert int(chunked[1]) == int(full[1]) == int(mask.sum())
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert hidden.shape == chunked[2].shape and not chunked[2][~mask].any()  # masked tokens get no gradient


def test_no_autograd_gives_the_loss_alone_and_an_empty_mask_gives_zero():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(VOCAB, 8)
    targets, mask = torch.randint(0, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(vocab_nll(hidden, weight, targets, mask, 3)[0],
                                   vocab_nll(hidden, weight, targets, mask, 0)[0], rtol=1e-6, atol=1e-6)
    empty = _loss_and_grads(4, hidden, weight, targets, torch.zeros(2, 5, dtype=torch.bool))
    assert float(empty[0]) == 0.0 and int(empty[1]) == 0 and not empty[2].any() and not empty[3].any()


def test_bf16_autocast_stays_close_to_the_full_logits():
    hidden, weight = torch.randn(4, 9, 32), torch.randn(VOCAB, 32) * 0.2
    targets, mask = torch.randint(0, VOCAB, (4, 9)), torch.ones(4, 9, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = _loss_and_grads(0, hidden, weight, targets, mask)
        chunked = _loss_and_grads(7, hidden, weight, targets, mask)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)


def _tiny_models(chunk):
    common = dict(encoder="mu/8", decoder="mu", image_size=32, vocab_size=VOCAB, text_len=12, logits_chunk=chunk)
    return {
        "openvision2": OpenVision2(ModelConfig(**common)),
        "cappa": CapPa(CapPaConfig(**common, text_pos="learned", parallel_prob=0.5, mask_id=3)),
        "openvision1": OpenVision1(OpenVision1Config(**common, text_encoder="mu", alt_text_len=8)),
    }


@pytest.mark.parametrize("method", ["openvision2", "cappa", "openvision1"])
def test_every_method_has_the_same_loss_and_gradients_with_and_without_chunks(method):
    g = torch.Generator().manual_seed(1)
    captions = torch.randint(5, VOCAB, (4, 12), generator=g)
    captions[0, 7:] = 0  # pads: masked out of the loss
    inputs = {"images": torch.randn(4, 3, 32, 32, generator=g), "captions": captions}
    if method == "openvision1":
        inputs |= {"alt_captions": torch.randint(5, VOCAB, (4, 8), generator=g),
                   "sub_captions": torch.randint(5, VOCAB, (4, 8), generator=g)}
    results = []
    for chunk in (0, 5):
        torch.manual_seed(0)
        model = _tiny_models(chunk)[method]
        torch.manual_seed(2)  # the same kept tokens / parallel examples in both runs
        out = model(**inputs)
        (out["loss"] * 2).backward()
        results.append((out["loss"].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_full, grads_full), (loss_chunked, grads_chunked) = results
    torch.testing.assert_close(loss_chunked, loss_full, rtol=1e-6, atol=1e-6)
    assert grads_full.keys() == grads_chunked.keys() and "decoder.head.weight" in grads_full
    for name, grad in grads_full.items():  # to 1e-6 of each tensor's scale: fp32 sums in another order
        assert (grads_chunked[name] - grad).abs().max() <= 1e-6 * (1 + grad.abs().max()), name
