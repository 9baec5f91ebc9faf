"""Decoding: the key/value cache changes no token, beam=1 is greedy, beams report true likelihoods."""

import itertools

import pytest
import torch
from PIL import Image

from openvision2.data.synthetic import SyntheticCaptions
from openvision2.errors import UserError
from openvision2.generate import caption, filter_logits, generate, greedy_caption
from openvision2.models.decoder import CaptionDecoder
from openvision2.models.registry import decoder_size
from openvision2.preprocess import normalize

@pytest.fixture(scope="module")
def setup(tiny_model):
    data = SyntheticCaptions(4, split="val", image_size=32)
    model, tokenizer = tiny_model
    images = torch.stack([data[i]["image"] for i in range(4)])
    return model, tokenizer, images


def teacher_forced_log_likelihood(model, tokenizer, images, tokens: list[list[int]]) -> torch.Tensor:
    """Sum of log p(token | image, earlier tokens) by one plain forward() over [bos] + tokens."""
    longest = max(len(t) for t in tokens)
    ids = torch.tensor([[tokenizer.bos_id, *t] + [tokenizer.pad_id] * (longest - len(t)) for t in tokens])
    with torch.no_grad():
        logits = model.decoder(model.visual_prefix(normalize(images)), ids[:, :-1])
    log_probs = logits.log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
    real = torch.tensor([[i < len(t) for i in range(longest)] for t in tokens])
    return (log_probs * real).sum(dim=1)


def test_cached_decoder_gives_the_full_forward_logits():
    torch.manual_seed(1)
    for mask, text_pos in (("causal", "none"), ("prefix", "learned")):
        decoder = CaptionDecoder(decoder_size("mu"), 16, 50, 20, mask, text_pos).eval()
        visual, text = torch.randn(2, 5, 16), torch.randint(0, 50, (2, 7))
        first, cache = decoder.forward_cached(text[:, :3], visual=visual)
        second, cache = decoder.forward_cached(text[:, 3:4], cache)
        rest, cache = decoder.forward_cached(text[:, 4:], cache)
        assert cache.length == 5 + 7 and cache.num_text == 7
        torch.testing.assert_close(torch.cat([first, second, rest], 1), decoder(visual, text), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(strategy="greedy"), dict(strategy="beam", beam_size=3),
                                     dict(strategy="sample", top_k=5, top_p=0.9, temperature=1.5, seed=3)])
def test_cache_changes_no_token(setup, options):
    model, tokenizer, images = setup
    cached = generate(model, tokenizer, images, use_cache=True, **options)
    uncached = generate(model, tokenizer, images, use_cache=False, **options)
    assert cached.tokens == uncached.tokens
    assert all(len(t) > 0 for t in cached.tokens)
    torch.testing.assert_close(torch.tensor(cached.log_likelihoods), torch.tensor(uncached.log_likelihoods))


def test_greedy_matches_the_reference_and_beam_of_one(setup):
    model, tokenizer, images = setup
    greedy = generate(model, tokenizer, images, strategy="greedy")
    beam = generate(model, tokenizer, images, strategy="beam", beam_size=1)
    assert beam.tokens == greedy.tokens
    assert greedy.texts == greedy_caption(model, tokenizer, images)


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_reports_the_likelihood_of_its_caption(setup, use_cache):
    model, tokenizer, images = setup
    beam = generate(model, tokenizer, images, strategy="beam", beam_size=4, use_cache=use_cache)
    rescored = teacher_forced_log_likelihood(model, tokenizer, images, beam.tokens)
    torch.testing.assert_close(torch.tensor(beam.log_likelihoods), rescored, atol=1e-4, rtol=1e-4)


def test_full_width_beam_finds_the_best_two_token_caption(setup):
    """With a beam as wide as the vocabulary, two steps of beam search are exhaustive."""
    model, tokenizer, images = setup
    image = images[:1]
    vocab = model.config.vocab_size
    beam = generate(model, tokenizer, image, strategy="beam", beam_size=vocab, max_new_tokens=2, ignore_eos=True)
    every = [list(pair) for pair in itertools.product(range(vocab), repeat=2)]
    scores = teacher_forced_log_likelihood(model, tokenizer, image.expand(len(every), -1, -1, -1), every)
    assert beam.tokens[0] == every[scores.argmax()]
    assert beam.log_likelihoods[0] == pytest.approx(scores.max().item(), abs=1e-4)


def test_sampling_is_seeded_and_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.23, ...: top_p 0.8 keeps the first two only
    assert probs[0] < 0.8 < probs[:2].sum()
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True, True]]


def test_sampling_with_top_k_one_is_greedy(setup):
    model, tokenizer, images = setup
    sampled = generate(model, tokenizer, images, strategy="sample", top_k=1, seed=0)
    assert sampled.tokens == generate(model, tokenizer, images).tokens
    a = generate(model, tokenizer, images, strategy="sample", seed=5, temperature=2.0)
    b = generate(model, tokenizer, images, strategy="sample", seed=5, temperature=2.0)
    assert a.tokens == b.tokens


def test_python_api_takes_pil_images_and_tensors(setup):
    model, tokenizer, images = setup
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    expected = generate(model, tokenizer, images).texts
    assert caption(model, tokenizer, pil, batch_size=3) == expected
    assert caption(model, tokenizer, images.float() / 255) == expected
    assert caption(model, tokenizer, images[0]) == expected[:1]
    with pytest.raises(UserError):
        generate(model, tokenizer, images, strategy="nucleus")
    with pytest.raises(UserError):
        caption(model, tokenizer, [torch.zeros(32, 32)])
