"""Masking, decoder masks, caption layout and loss, weight decay: DESIGN.md §1.3, §2, §3, §4.4."""

import pytest
import torch
import torch.nn.functional as F

from openvision2.errors import UserError
from openvision2.models import ModelConfig, OpenVision2, caption_targets, keep_random_tokens, num_kept
from openvision2.models.decoder import attention_mask
from openvision2.train.optim import decayed_parameter_names, warmup_cosine


def tiny(**kw):
    kw = {"encoder": "mu/8", "decoder": "mu", "image_size": 32, "vocab_size": 50, "text_len": 12, **kw}
    return OpenVision2(ModelConfig(**kw))


@pytest.mark.parametrize("n, kept", [(36, 12), (256, 89), (576, 201), (729, 255), (1024, 358)])
def test_keep_count_matches_spec_table(n, kept):
    assert num_kept(n, 0.35) == kept


def test_keep_random_tokens_without_replacement_random_order_per_example():
    tokens = torch.arange(256.0)[None, :, None].expand(64, 256, 1)
    kept = keep_random_tokens(tokens, 0.35)[..., 0]
    assert kept.shape == (64, 89)
    assert all(len(set(row.tolist())) == 89 for row in kept)  # no repeats
    assert not all(torch.equal(row, row.sort().values) for row in kept)  # not re-sorted
    assert len({tuple(row.tolist()) for row in kept}) == 64  # independent per example


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_keep_ratio_outside_range_is_refused(ratio):
    with pytest.raises(UserError, match="keep_ratio"):
        ModelConfig(keep_ratio=ratio)


def test_eval_keep_ratio_sets_the_tokens_decoded_at_inference_deterministically():
    images = torch.randn(3, 3, 32, 32)
    model = tiny()
    assert model.visual_prefix(images).shape[1] == num_kept(16, 0.35)  # training: random subset per example
    model.eval()
    _, tokens = model.encode_image(images)
    assert tokens.shape[1] == 16  # the encoder always sees every patch
    # default: the training keep_ratio, as the release does at evaluation
    kept = model.visual_prefix(images)
    assert kept.shape[1] == 5 and torch.equal(kept, model.visual_prefix(images))  # seeded: reproducible
    assert torch.equal(model.visual_prefix(images[2:]), kept[2:])  # the same subset whatever the batch
    all_tokens = tiny(eval_keep_ratio=1.0).eval()
    all_tokens.load_state_dict(model.state_dict())
    assert torch.equal(all_tokens.visual_prefix(images), tokens)  # every token, in spatial order


def test_mask_options():
    causal = attention_mask(3, 4, "causal")
    assert torch.equal(causal, torch.ones(7, 7, dtype=torch.bool).tril())
    prefix = attention_mask(3, 4, "prefix")
    assert prefix[:3, :3].all() and torch.equal(prefix[3:], causal[3:])
    assert not prefix[:3, 3:].any()


def test_prefix_mask_makes_text_blind_to_visual_order_causal_does_not():
    # Without decoder position embeddings only the mask can make the visual order matter; it
    # shows from the second layer on, once visual tokens have mixed (the "nano" decoder has two).
    visual, text = torch.randn(2, 5, 32), torch.randint(0, 50, (2, 6))
    perm = torch.tensor([4, 2, 0, 3, 1])
    for kind, same in [("prefix", True), ("causal", False)]:
        decoder = tiny(decoder_mask=kind, decoder="nano").decoder
        a, b = decoder(visual, text), decoder(visual[:, perm], text)
        assert torch.allclose(a, b, atol=1e-5) == same


def test_no_decoder_position_embedding_unless_asked():
    assert tiny().decoder.text_pos is None
    assert tiny(text_pos="learned").decoder.text_pos.shape == (11, 32)


def test_loss_positions():
    bos, eos, pad, cls = 1, 2, 0, 3
    captions = torch.tensor([[bos, 7, 8, eos, pad, pad, cls],   # short caption, padded
                             [bos, 7, 8, 9, 10, eos, cls]])     # truncated: last slot is [eos]
    inputs, targets, mask = caption_targets(captions, pad)
    assert torch.equal(inputs, captions[:, :-1]) and torch.equal(targets, captions[:, 1:])
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]  # pieces + [eos]; no pad, no [CLS]


def test_loss_is_token_mean_over_batch():
    model = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    captions = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0, 0, 0, 0, 3], [1, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3]])
    out = model(images, captions)
    inputs, targets, mask = caption_targets(captions, 0)
    logits = model.decoder(model.visual_prefix(images), inputs)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")[mask.flatten()]
    assert out["num_tokens"].item() == 6 + 2
    assert torch.allclose(out["loss"], nll.mean(), atol=1e-6)  # not the mean of per-sentence means


def test_weight_decay_only_on_kernels():
    model = tiny(text_pos="learned")
    decayed = decayed_parameter_names(model)
    names = dict(model.named_parameters())
    assert {"encoder.patch_embed.proj.weight", "decoder.head.weight", "decoder.visual_proj.weight",
            "encoder.blocks.0.attn.qkv.weight", "decoder.blocks.0.fc2.weight"} <= decayed
    for name in ["encoder.cls_token", "decoder.token_embed.weight", "decoder.text_pos", "encoder.fc_norm.weight",
                 "encoder.blocks.0.attn.qkv.bias", "decoder.norm.weight", "decoder.blocks.0.norm1.weight"]:
        assert name in names and name not in decayed
    assert decayed <= set(names)
    assert all(names[n].dim() == 2 or "patch_embed" in n for n in decayed)


def test_warmup_then_cosine_to_zero():
    assert warmup_cosine(0, 10, 110) == 0.0
    assert warmup_cosine(5, 10, 110) == 0.5
    assert warmup_cosine(10, 10, 110) == 1.0
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0)


def test_decoder_gelu_is_tanh_and_head_bias_free():
    decoder = tiny().decoder
    assert decoder.head.bias is None and decoder.visual_proj.bias is None
    assert all(m.eps == 1e-6 for m in decoder.modules() if isinstance(m, torch.nn.LayerNorm))
