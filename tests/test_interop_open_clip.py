"""open_clip both ways: the released vision-only layout imported (compared with open_clip's own
VisionTransformer), and our export loaded by upstream open_clip's standard calls."""

import json
from functools import partial

import open_clip
import pytest
import torch
from open_clip.transformer import LayerNorm, VisionTransformer
from safetensors.torch import save_file
from torch import nn

from openvision2.checkpoint import load_checkpoint, load_encoder
from openvision2.cli import main
from openvision2.errors import UserError
from openvision2.generate import greedy_caption
from openvision2.interop import export_checkpoint, load_open_clip
from openvision2.models.posemb import sincos_2d_with_cls

from interop_fixtures import IMAGE_SIZE, TOL, images, max_diff, randomise, tiny_checkpoint

WIDTH, PATCH = 32, 8  # the "mu/8" encoder
RELEASE_VISION_CFG = dict(image_size=IMAGE_SIZE, patch_size=PATCH, width=WIDTH, layers=1, head_width=16,
                          mlp_ratio=4.0, no_ln_pre=True, pool_type="avg", final_ln_after_pool=True,
                          output_tokens=True, norm_kwargs={"eps": 1e-6})


def release_tower(proj: str = "identity", seed: int = 0, **changes) -> VisionTransformer:
    """open_clip's own class configured as the OV2 release (DESIGN.md §9.3), random weights, sin-cos table."""
    cfg = dict(RELEASE_VISION_CFG, **changes)
    tower = VisionTransformer(
        image_size=cfg["image_size"], patch_size=cfg["patch_size"], width=cfg["width"], layers=cfg["layers"],
        heads=cfg["width"] // cfg["head_width"], mlp_ratio=cfg["mlp_ratio"], no_ln_pre=cfg["no_ln_pre"],
        pool_type=cfg["pool_type"], final_ln_after_pool=cfg["final_ln_after_pool"], output_tokens=True,
        output_dim=WIDTH if proj == "identity" else 16, act_layer=nn.GELU,
        norm_layer=partial(LayerNorm, eps=cfg["norm_kwargs"]["eps"]))
    randomise(tower, seed)
    with torch.no_grad():
        grid = cfg["image_size"] // cfg["patch_size"]
        tower.positional_embedding.copy_(sincos_2d_with_cls(grid, grid, cfg["width"]))
        if proj == "identity":
            tower.proj.copy_(torch.eye(WIDTH))
    return tower.eval()


def write_release(directory, tower, vision_cfg=None, weights="open_clip_pytorch_model.bin", prefix="") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": {"embed_dim": tower.proj.shape[1], "vision_cfg": vision_cfg or RELEASE_VISION_CFG},
              "preprocess_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                 "interpolation": "bilinear", "resize_mode": "squash"}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    state = {prefix + k: v.contiguous() for k, v in tower.state_dict().items()}
    if weights.endswith(".safetensors"):
        save_file(state, directory / weights)
    else:
        torch.save(state, directory / weights)


@pytest.mark.parametrize("weights,prefix", [("open_clip_pytorch_model.bin", ""),
                                            ("open_clip_model.safetensors", "visual.")])
def test_import_matches_open_clip_forward(tmp_path, weights, prefix):
    tower = release_tower()
    write_release(tmp_path / "release", tower, weights=weights, prefix=prefix)
    model, preprocess, notes = load_open_clip(tmp_path / "release")
    assert model.config.encoder == "mu/8" and model.decoder is None and notes == {}
    assert preprocess.size == IMAGE_SIZE and preprocess.interpolation == "bilinear"
    x = images()
    with torch.no_grad():
        their_pooled, their_tokens = tower(x)
        pooled, tokens = model.encode_image(x)
    assert max_diff(tokens, their_tokens) <= TOL
    assert max_diff(pooled, their_pooled) <= TOL


def test_import_drops_a_projection_and_says_so(tmp_path):
    tower = release_tower(proj="random")
    write_release(tmp_path / "release", tower)
    model, _, notes = load_open_clip(tmp_path / "release")
    assert notes == {"dropped_proj": [WIDTH, 16]}
    x = images()
    with torch.no_grad():
        their_pooled, their_tokens = tower(x)
        pooled, tokens = model.encode_image(x)
    assert max_diff(tokens, their_tokens) <= TOL
    assert max_diff(pooled @ tower.proj, their_pooled) <= TOL  # the pooled feature before the projection


def test_ov2_import_checkpoint_is_usable_by_other_commands(tmp_path, capsys):
    tower = release_tower()
    write_release(tmp_path / "release", tower)
    assert main(["import", "--from", str(tmp_path / "release"), "--out", str(tmp_path / "ckpt"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoder"] == "mu/8" and summary["image_size"] == IMAGE_SIZE

    model, tokenizer, meta = load_checkpoint(tmp_path / "ckpt")
    assert tokenizer is None and model.decoder is None and meta["imported_format"] == "open_clip"
    encoder, _ = load_encoder(tmp_path / "ckpt")
    x = images()
    with torch.no_grad():
        assert max_diff(encoder.forward_tokens(x)[1], tower(x)[1]) <= TOL
    # captioning needs a decoder: a clear one-line refusal, no traceback
    with pytest.raises(UserError, match="encoder only"):
        greedy_caption(model, tokenizer, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8))
    # and it exports like any checkpoint: imported -> timm, still equal to open_clip's forward
    import timm
    out = export_checkpoint(tmp_path / "ckpt", "timm", tmp_path / "timm")
    timm_tower = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert max_diff(timm_tower.forward_features(x)[:, 1:], tower(x)[1]) <= TOL


@pytest.mark.parametrize("change,message", [
    ({"pool_type": "tok"}, "pool_type"),
    ({"norm_kwargs": {"eps": 1e-5}}, "eps"),
    ({"final_ln_after_pool": False}, "final_ln_after_pool"),
])
def test_import_refuses_other_vits(tmp_path, change, message):
    write_release(tmp_path / "release", release_tower(), vision_cfg=dict(RELEASE_VISION_CFG, **change))
    with pytest.raises(UserError, match=message):
        load_open_clip(tmp_path / "release")


def test_import_refuses_open_clip_sincos_ordering(tmp_path):
    """open_clip's own sin_cos_2d table (MAE ordering) is not OpenVision's (DESIGN.md §1.2)."""
    tower = release_tower()
    with torch.no_grad():
        tower.positional_embedding.copy_(VisionTransformer(
            image_size=IMAGE_SIZE, patch_size=PATCH, width=WIDTH, layers=1, heads=2, mlp_ratio=4.0,
            pos_embed_type="sin_cos_2d").positional_embedding)
    write_release(tmp_path / "release", tower)
    with pytest.raises(UserError, match="sin-cos"):
        load_open_clip(tmp_path / "release")
    assert main(["import", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2


@pytest.mark.parametrize("options", [{}, {"pre_norm": True}], ids=["paper", "pre_norm"])
def test_open_clip_export_loads_with_upstream_create_model(tmp_path, options):
    model, _ = tiny_checkpoint(tmp_path / "ckpt", **options)
    out = export_checkpoint(tmp_path / "ckpt", "open_clip", tmp_path / "oc")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]

    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    clip.eval()
    x = images()
    with torch.no_grad():
        their_pooled, their_tokens = clip.visual(x)
        pooled, tokens = model.encode_image(x)
    assert max_diff(their_tokens, tokens) <= TOL
    assert max_diff(their_pooled, pooled) <= TOL
    # preprocessing travels: squash resize to the model size, bilinear, ImageNet statistics
    text = repr(preprocess)
    assert f"size=({IMAGE_SIZE}, {IMAGE_SIZE})" in text and "bilinear" in text
    assert "mean=[0.485, 0.456, 0.406]" in text.replace("(", "[").replace(")", "]")

    # and back: our export imports to the same encoder weights
    again, _, _ = load_open_clip(out)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(again.encoder.state_dict()[key], value), key


def test_open_clip_export_refuses_no_cls(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt", class_token=False)
    with pytest.raises(UserError, match="CLS"):
        export_checkpoint(tmp_path / "ckpt", "open_clip", tmp_path / "oc")
    assert not (tmp_path / "oc").exists()


def test_released_open_clip_tower_opens_as_transformers_model(tmp_path):
    """The request behind the issue: a released (or tuned) open_clip tower as an HF ViTModel, compared
    directly across the two libraries' own forward passes."""
    from transformers import AutoModel

    tower = release_tower(seed=3)
    write_release(tmp_path / "release", tower)
    assert main(["import", "--from", str(tmp_path / "release"), "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    vit = AutoModel.from_pretrained(tmp_path / "hf").eval()
    x = images()
    with torch.no_grad():
        hidden = vit(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        assert max_diff(hidden[:, 1:], tower(x)[1]) <= TOL
        assert max_diff(vit.layernorm(hidden[:, 1:].mean(dim=1)), tower(x)[0]) <= TOL
