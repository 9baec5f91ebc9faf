"""Image sides that are not a multiple of the patch (DESIGN.md §1.2): the released ViT's VALID convolution
drops the remainder, so 384 px in 14 px patches is a 27x27 grid of 729 tokens, 255 of them kept.
Checked on our encoder, and against open_clip's, timm's and transformers' own forward passes."""

import json
from functools import partial

import open_clip
import pytest
import timm
import torch
from open_clip.transformer import LayerNorm, VisionTransformer
from torch import nn
from transformers import AutoModel

from openvision2.checkpoint import load_checkpoint, save_checkpoint
from openvision2.cli import main
from openvision2.methods import count_flops
from openvision2.generate import greedy_caption
from openvision2.interop import export_checkpoint
from openvision2.models import ModelConfig, OpenVision2, create_encoder
from openvision2.models.masking import num_kept
from openvision2.models.posemb import sincos_2d_with_cls
from openvision2.models.registry import ENCODER_SIZES, Size
from openvision2.preprocess import normalize
from openvision2.train.recipes import run_recipe

from interop_fixtures import TOL, max_diff, randomise, tiny_model

SIZE, PATCH = 384, 14


def pictures(count: int = 2, size: int = SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return normalize(torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8))


def test_encoder_drops_the_remainder_like_a_valid_convolution():
    encoder = create_encoder("mu/14", img_size=SIZE).eval()
    x = pictures()
    with torch.no_grad():
        pooled, tokens = encoder.forward_tokens(x)
        _, cropped = encoder.forward_tokens(x[..., :378, :378])  # 27 * 14: the pixels a VALID conv reads
    assert tokens.shape == (2, 729, 32) and pooled.shape == (2, 32)
    assert torch.equal(tokens, cropped)
    assert num_kept(729, 0.35) == 255


def test_model_trains_and_captions_at_384_over_14():
    _, tokenizer = tiny_model()
    model = OpenVision2(ModelConfig(encoder="mu/14", decoder="mu", image_size=SIZE, vocab_size=tokenizer.vocab_size,
                                    text_len=8))
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    tokens = torch.randint(3, tokenizer.vocab_size, (2, 8))
    loss = model.train()(normalize(images), tokens)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert len(greedy_caption(model.eval(), tokenizer, images)) == 2  # 255 of 729 tokens decoded
    flops = count_flops(ModelConfig(encoder="So400m/14", decoder="So400m", image_size=SIZE)).to_dict()
    assert flops["decoder_tokens"] == {"visual": 255, "text": 127}


def so400m_release_tower(depth: int) -> VisionTransformer:
    """open_clip's own VisionTransformer configured as the released So400m/14@384 vision tower
    (DESIGN.md §9.3: head_width 72, mlp_ratio 3.7362, no ln_pre, avg pool, ln_post after the pool)."""
    tower = VisionTransformer(image_size=SIZE, patch_size=PATCH, width=1152, layers=depth, heads=16,
                              mlp_ratio=3.7362, no_ln_pre=True, pool_type="avg", final_ln_after_pool=True,
                              output_tokens=True, output_dim=1152, act_layer=nn.GELU,
                              norm_layer=partial(LayerNorm, eps=1e-6))
    with torch.no_grad():
        assert tower.transformer.resblocks[0].mlp.c_fc.out_features == 4304
        tower.positional_embedding.copy_(sincos_2d_with_cls(27, 27, 1152))
        tower.proj.copy_(torch.eye(1152))
    return tower.eval()


def test_released_so400m_384_imports_and_exports_to_every_format(tmp_path, monkeypatch):
    """Done-when of the issue: a released-layout So400m/14@384 tower built by open_clip (depth 1),
    imported, and exported to timm, hf and open_clip, each within 1e-5 of open_clip's forward."""
    monkeypatch.setitem(ENCODER_SIZES, "So400m-d1", Size(1152, 1, 16, 4304))
    tower = so400m_release_tower(depth=1)
    directory = tmp_path / "release"
    directory.mkdir()
    vision_cfg = dict(image_size=SIZE, patch_size=PATCH, width=1152, layers=1, head_width=72, mlp_ratio=3.7362,
                      no_ln_pre=True, pool_type="avg", final_ln_after_pool=True, output_tokens=True,
                      norm_kwargs={"eps": 1e-6})
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 1152,
                                                                               "vision_cfg": vision_cfg}}))
    torch.save(tower.state_dict(), directory / "open_clip_pytorch_model.bin")
    assert main(["import", "--from", str(directory), "--out", str(tmp_path / "ckpt")]) == 0

    x = pictures(1)
    with torch.no_grad():
        their_pooled, their_tokens = tower(x)
        assert their_tokens.shape == (1, 729, 1152)
        model, _, _ = load_checkpoint(tmp_path / "ckpt")
        pooled, tokens = model.encoder.forward_tokens(x)
        assert max_diff(tokens, their_tokens) <= TOL and max_diff(pooled, their_pooled) <= TOL

        timm_tower = timm.create_model(f"local-dir:{export_checkpoint(tmp_path / 'ckpt', 'timm', tmp_path / 't')}",
                                       pretrained=True).eval()
        features = timm_tower.forward_features(x)
        assert max_diff(features[:, 1:], their_tokens) <= TOL
        assert max_diff(timm_tower.forward_head(features), their_pooled) <= TOL

        vit = AutoModel.from_pretrained(export_checkpoint(tmp_path / "ckpt", "hf", tmp_path / "hf")).eval()
        hidden = vit(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        assert max_diff(hidden[:, 1:], their_tokens) <= TOL
        assert max_diff(vit.layernorm(hidden[:, 1:].mean(dim=1)), their_pooled) <= TOL

        clip, _, _ = open_clip.create_model_and_transforms(
            f"local-dir:{export_checkpoint(tmp_path / 'ckpt', 'open_clip', tmp_path / 'oc')}")
        again_pooled, again_tokens = clip.eval().visual(x)
        assert max_diff(again_tokens, their_tokens) <= TOL and max_diff(again_pooled, their_pooled) <= TOL


@pytest.mark.parametrize("fmt,options,skip", [("hf-clip", {"pre_norm": True}, 1),
                                              ("hf-siglip", {"class_token": False}, 0)])
def test_clip_and_siglip_exports_at_384_over_14(tmp_path, fmt, options, skip):
    """The two formats the released layout does not fit, with the options that make them exact."""
    model, tokenizer = tiny_model(**options)
    config = ModelConfig(**{**model.config.__dict__, "encoder": "mu/14", "image_size": SIZE})
    model = randomise(OpenVision2(config)).eval()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    tower = AutoModel.from_pretrained(export_checkpoint(tmp_path / "ckpt", fmt, tmp_path / fmt)).eval()
    x = pictures()
    with torch.no_grad():
        hidden = tower(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        pooled, tokens = model.encoder.forward_tokens(x)
    assert tokens.shape == (2, 729, 32)
    assert max_diff(hidden[:, skip:], tokens) <= TOL


def test_so400m_384_recipe_starts_every_stage_at_reduced_width(tmp_path):
    """84 -> 224 -> 384 px in 14 px patches (6x6, 16x16, 27x27 grids), one step each, each stage
    starting from the previous one's weights; a 32-wide model instead of the 1152-wide one."""
    overrides = ["encoder=mu/14", "decoder=mu", "dataset=synthetic", "allow_embedded=true", "tokenizer=bpe",
                 "bpe_vocab_size=64", "text_len=16", "train_samples=8", "val_samples=2", "batch_size=2",
                 "num_workers=0", "precision=fp32", "parallel=none", "meta_init=false", "evals=",
                 "show_captions=0", "tensorboard=false", "log_every=1"]
    summaries = run_recipe("so400m14-384", tmp_path, overrides, steps=1, progress=False)
    assert [s["step"] for s in summaries] == [1, 1, 1]
    sizes = [json.loads((tmp_path / f"stage-{n}" / "config.json").read_text())["model"]["image_size"]
             for n in (84, 224, 384)]
    assert sizes == [84, 224, 384]
