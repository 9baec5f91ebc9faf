"""OpenVision 1 baseline (DESIGN.md §6), the CapPa-style variant (DESIGN.md §10.1) and the batch fields they need."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from openvision2.models.contrastive import contrastive_loss
from openvision2.data.build import CaptionCollate, sub_caption
from openvision2.data.synthetic import SyntheticCaptions
from openvision2.errors import UserError
from openvision2.models.cappa import CapPa, CapPaConfig, parallel_attention_mask
from openvision2.models.decoder import attention_mask
from openvision2.models.losses import objective
from openvision2.models.openvision1 import OpenVision1, OpenVision1Config
from openvision2.tokenizer import CaptionTokenizer

B, VOCAB, TEXT, ALT = 4, 50, 12, 8


def tiny_ov1(**kw):
    kw = {"encoder": "mu/8", "text_encoder": "mu", "decoder": "mu", "image_size": 32, "vocab_size": VOCAB,
          "text_len": TEXT, "alt_text_len": ALT, **kw}
    return OpenVision1(OpenVision1Config(**kw))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(5, VOCAB, (B, n), generator=g)
    return torch.randn(B, 3, 32, 32, generator=g), ids(TEXT), ids(ALT), ids(ALT)


def test_total_is_one_contrastive_plus_two_caption_after_the_loops_scaling():
    model = tiny_ov1()
    out = model(*batch())
    caption = out["nll_sum"] / out["num_tokens"]
    assert torch.allclose(out["caption_loss"], caption, atol=1e-6)
    assert torch.allclose(out["loss"], caption, atol=1e-6)
    assert torch.allclose(out["aux_loss"], 1.0 * out["contrastive_loss"])  # clip_loss_weight 1, already applied
    # the training loop's objective (caption_loss_weight 2.0, the token count of this one batch)
    total = objective(out, 2.0, 1 / out["num_tokens"])
    assert torch.allclose(total, out["contrastive_loss"] + 2 * out["caption_loss"])
    assert out["num_tokens"] == B * (TEXT - 2)  # no pads in the batch: every target but the [CLS] one
    assert math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)


def test_decoder_has_one_query_per_caption_position_and_prefix_lm_mask():
    model = tiny_ov1()
    images, captions, alt, _ = batch()
    _, patches = model.encode_image(images)
    assert patches.shape[1] == 16  # (32/8)^2 patch tokens, no masking in OpenVision 1
    logits = model.caption_logits(patches, alt)
    assert logits.shape == (B, TEXT, VOCAB)
    assert model.decoder.queries.shape == (TEXT, 32)
    # prefix = 16 patches + 7 alt-text tokens ([CLS] position dropped); queries see the prefix,
    # are causal among themselves, and the prefix never sees them
    mask = attention_mask(16 + ALT - 1, TEXT, "prefix")
    prefix = 16 + ALT - 1
    assert mask[:prefix, :prefix].all() and not mask[:prefix, prefix:].any()
    assert mask[prefix:, :prefix].all() and torch.equal(mask[prefix:, prefix:], torch.ones(TEXT, TEXT).tril().bool())


def test_caption_is_predicted_from_image_and_alt_text_never_from_the_caption():
    model = tiny_ov1().eval()
    images, captions, alt, sub = batch()
    other_captions = torch.randint(5, VOCAB, captions.shape)
    with torch.no_grad():
        a = model.caption_logits(model.encode_image(images)[1], alt)
        b = model.caption_logits(model.encode_image(images)[1], alt.flip(0))
    assert not torch.allclose(a, b)  # the alt-text conditions the captioner
    # changing the caption changes the targets only, not the logits
    out1, out2 = model(images, captions, alt, sub), model(images, other_captions, alt, sub)
    assert torch.allclose(out1["contrastive_loss"], out2["contrastive_loss"])


def test_text_encoder_is_not_causal_and_pools_the_last_position():
    model = tiny_ov1()
    ids = torch.randint(5, VOCAB, (2, ALT))
    pooled, tokens = model.text_encoder(ids)
    assert pooled.shape == (2, 32) and tokens.shape == (2, ALT - 1, 32)
    changed = ids.clone()
    changed[:, -2] = (changed[:, -2] + 1 - 5) % (VOCAB - 5) + 5
    _, tokens2 = model.text_encoder(changed)
    assert not torch.allclose(tokens[:, 0], tokens2[:, 0])  # position 0 sees a later token


def test_contrastive_loss_matches_clip_and_falls_for_matching_pairs():
    img = F.normalize(torch.randn(6, 16), dim=-1)
    txt = F.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(contrastive_loss(img, txt, scale), expected)
    assert contrastive_loss(img, img, scale) < expected


def test_ov1_learns_on_the_embedded_dataset():
    """A few steps of AdamW on one tiny batch lower both losses: the model and its gradients are wired."""
    torch.manual_seed(0)
    model = tiny_ov1()
    images, captions, alt, sub = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(images, captions, alt, sub)
    for _ in range(30):
        out = model(images, captions, alt, sub)
        objective(out, 2.0, 1 / out["num_tokens"]).backward()
        opt.step()
        opt.zero_grad()
    assert out["caption_loss"] < 0.7 * first["caption_loss"]
    assert out["contrastive_loss"] < first["contrastive_loss"]


def test_collate_emits_alt_text_and_one_caption_sentence():
    tok = CaptionTokenizer.train_bpe(SyntheticCaptions(200).captions(), 128)
    samples = [SyntheticCaptions(4, image_size=16)[i] for i in range(4)]
    plain = CaptionCollate(tok, 20)(samples)
    assert set(plain) == {"images", "captions", "texts"}  # unchanged without extra fields
    full = CaptionCollate(tok, 20, extra_fields=("alt_captions", "sub_captions"), alt_text_len=10)(samples)
    assert full["alt_captions"].shape == full["sub_captions"].shape == (4, 10)
    assert torch.equal(full["alt_captions"], tok.encode([s["alt_text"] for s in samples], 10))
    assert full["alt_captions"][:, -1].eq(tok.cls_id).all()
    with pytest.raises(UserError):
        CaptionCollate(tok, 20, extra_fields=("nope",))


def test_a_samples_sentence_is_drawn_with_its_own_rng():
    """The sub-caption is part of the sample, drawn with the sample's rng (shards) or its index
    (the synthetic set), not with a worker's global random: a resume on another worker count, which
    reproduces each sample, reproduces it too; the collate uses it."""
    import random

    from openvision2.data.augment import EvalResize
    from openvision2.data.shards import ShardDataset
    from openvision2.data.badsamples import BadSampleLog
    from shard_fixtures import image_bytes

    text = "a red circle at the top. two blue squares! a cross."
    shards = ShardDataset.__new__(ShardDataset)  # to_sample alone: no shards to open
    shards.caption_key, shards.alt_caption_key, shards.with_meta = "txt", None, False
    shards.transform = EvalResize(8)
    make = lambda seed: shards.to_sample({"jpg": image_bytes(1), "txt": text.encode()}, "s", "k", random.Random(seed),
                                         BadSampleLog())
    drawn = [make(f"5/{position}")["sub_caption"] for position in range(40)]
    assert drawn == [make(f"5/{position}")["sub_caption"] for position in range(40)]
    assert set(drawn) == {"a red circle at the top", "two blue squares", "a cross"}
    synthetic = SyntheticCaptions(8, image_size=16)
    assert [synthetic[i]["sub_caption"] for i in range(8)] == [SyntheticCaptions(8, image_size=16)[i]["sub_caption"]
                                                                for i in range(8)]
    tok = CaptionTokenizer.train_bpe(SyntheticCaptions(200).captions(), 128)
    samples = [synthetic[i] for i in range(4)]
    batch = CaptionCollate(tok, 20, extra_fields=("sub_captions",), alt_text_len=10)(samples)
    assert torch.equal(batch["sub_captions"], tok.encode([s["sub_caption"] for s in samples], 10))


def test_sub_caption_splits_on_full_stops_and_exclamation_marks():
    import random

    rng = random.Random(0)
    text = "a red circle at the top. two blue squares! a cross."
    seen = {sub_caption(text, rng) for _ in range(100)}
    assert seen == {"a red circle at the top", "two blue squares", "a cross"}
    assert sub_caption("one sentence only.") == "one sentence only"


def test_openvision1_trains_with_the_training_loop(tmp_path):
    """`ov2 train --preset tiny-cpu-ov1`, shrunk: the loop builds OV1 from the factory, the collate
    feeds the fields it lists, and the held-out caption loss falls."""
    from openvision2.train.loop import train
    from openvision2.train.presets import get_preset

    config = get_preset("tiny-cpu-ov1")
    assert config.method == "openvision1"
    config.encoder, config.decoder, config.text_encoder, config.image_size = "mu/8", "mu", "mu", 32
    config.steps, config.batch_size, config.val_samples, config.train_samples = 25, 16, 16, 400
    config.warmup_steps, config.eval_every, config.ckpt_every, config.log_every = 2, 25, 25, 25
    config.num_workers, config.show_captions, config.bpe_vocab_size, config.precision = 0, 2, 96, "fp32"
    config.tensorboard = False
    summary = train(config, tmp_path, progress=False)
    assert summary["final_val_loss"] < summary["first_val_loss"]
    assert len(summary["captions"]) == 2 and all(isinstance(c, str) for c in summary["captions"])

    from openvision2.checkpoint import load_checkpoint
    from openvision2.generate import parallel_caption

    model, tokenizer, meta = load_checkpoint(tmp_path)
    assert isinstance(model, OpenVision1) and meta["model"]["method"] == "openvision1"
    images = torch.stack([SyntheticCaptions(2, split="val", image_size=32)[i]["image"] for i in range(2)])
    alt = [SyntheticCaptions(2, split="val", image_size=32)[i]["alt_text"] for i in range(2)]
    assert len(parallel_caption(model, tokenizer, images, alt)) == 2

def test_cappa_keeps_every_token_and_parallel_prediction_uses_mask_ids():
    cfg = CapPaConfig(encoder="mu/8", decoder="mu", image_size=32, vocab_size=VOCAB, text_len=TEXT,
                      parallel_prob=1.0, text_pos="learned", mask_id=4)
    model = CapPa(cfg).train()
    seen = {}
    hidden = model.decoder.hidden
    model.decoder.hidden = lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs) or hidden(*args, **kwargs)
    images, captions, _, _ = batch()
    out = model(images, captions)
    visual, inputs = seen["args"]
    assert visual.shape[1] == 16  # keep_ratio 1: all patches, in spatial order
    assert inputs.eq(4).all()  # every decoder input replaced by [MASK]
    mask = seen["kwargs"]["attn_mask"]
    assert mask.shape == (B, 1, 16 + TEXT - 1, 16 + TEXT - 1) and mask[:, :, 16:, :].all()
    assert out["num_tokens"] == B * (TEXT - 2)


def test_parallel_mask_mixes_teacher_forced_and_parallel_examples():
    parallel = torch.tensor([True, False])
    mask = parallel_attention_mask(3, 4, "causal", parallel)
    causal = attention_mask(3, 4, "causal")
    assert torch.equal(mask[1, 0], causal)
    assert mask[0, 0, 3:, :].all() and torch.equal(mask[0, 0, :3], causal[:3])


def test_cappa_config_checks():
    with pytest.raises(UserError, match="text_pos"):
        CapPaConfig(encoder="mu/8", decoder="mu", parallel_prob=0.5)
    with pytest.raises(UserError, match="mask_id"):
        CapPaConfig(encoder="mu/8", decoder="mu", parallel_prob=0.5, text_pos="learned", vocab_size=50, mask_id=103)
    assert CapPaConfig().keep_ratio == 1.0


def test_factory_builds_each_method_from_presets():
    from openvision2.train.factory import build_model
    from openvision2.train.presets import get_preset

    tok = CaptionTokenizer.train_bpe(SyntheticCaptions(200).captions(), 96)
    for name, kind in (("tiny-cpu-ov1", OpenVision1), ("tiny-cpu-cappa", CapPa)):
        config = get_preset(name)
        config.encoder, config.decoder, config.text_encoder = "mu/8", "mu", "mu"
        model = build_model(config.model, tok)
        assert isinstance(model, kind) and model.config.method == config.method
    cappa = build_model(get_preset("tiny-cpu-cappa").model, tok)
    assert cappa.config.keep_ratio == 1.0 and cappa.config.mask_id == tok.tokenizer.token_to_id("[UNK]")
    # the loop weights the caption loss by the run's caption_loss_weight; OV1 adds its weighted contrastive
    assert get_preset("tiny-cpu-ov1").caption_loss_weight == 2.0
    assert build_model(get_preset("tiny-cpu-ov1").model, tok).config.clip_loss_weight == 1.0


def _gather_worker(rank, world, port, path):
    from scaleout_helpers import end_worker

    import torch.distributed as dist

    code = 1
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.manual_seed(0)
        img = F.normalize(torch.randn(8, 16), dim=-1)
        txt = F.normalize(torch.randn(8, 16), dim=-1)
        rows = slice(4 * rank, 4 * rank + 4)
        local = img[rows].clone().requires_grad_()
        loss = contrastive_loss(local, txt[rows], torch.tensor(5.0))
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": local.grad}, f"{path}/rank{rank}.pt")
        code = 0
    finally:
        end_worker(code)


def test_contrastive_loss_gathers_across_ranks(tmp_path):
    """Two gloo ranks with 4 pairs each: the mean of their local losses is the 8-pair CLIP loss, and
    each rank's gradient includes what the other rank's loss contributes through the gather."""
    from scaleout_helpers import free_port, spawn

    spawn(_gather_worker, 2, free_port(), str(tmp_path))
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    img = F.normalize(torch.randn(8, 16), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(8, 16), dim=-1)
    full = contrastive_loss(img, txt, torch.tensor(5.0))
    assert torch.allclose((parts[0]["loss"] + parts[1]["loss"]) / 2, full, atol=1e-6)
    (full * 2).backward()  # the sum of the two ranks' losses
    assert torch.allclose(torch.cat([parts[0]["grad"], parts[1]["grad"]]), img.grad, atol=1e-5)
