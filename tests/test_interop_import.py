"""Import from timm and transformers: towers built and saved by those libraries themselves (as a
VLM that tuned one would save it), imported, and compared with that library's own forward pass."""

import json

import pytest
import timm
import torch
from timm.models import save_for_hf
from transformers import (CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel, ViTConfig,
                          ViTModel)

from openvision2.checkpoint import load_encoder
from openvision2.cli import main
from openvision2.errors import UserError
from openvision2.interop import load_pretrained
from openvision2.models.posemb import sincos_2d, sincos_2d_with_cls

from interop_fixtures import IMAGE_SIZE, TOL, images, max_diff, randomise

GRID = IMAGE_SIZE // 8


def timm_tower(class_token=True, pre_norm=False, num_classes=0, sincos=True):
    tower = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=IMAGE_SIZE, patch_size=8,
                              embed_dim=32, depth=1, num_heads=2, mlp_ratio=4.0, global_pool="avg", fc_norm=True,
                              num_classes=num_classes, class_token=class_token, pre_norm=pre_norm)
    randomise(tower)
    with torch.no_grad():
        if sincos:
            table = sincos_2d_with_cls(GRID, GRID, 32) if class_token else sincos_2d(GRID, GRID, 32)
            tower.pos_embed.copy_(table[None])
        if tower.patch_embed.proj.bias is not None:
            tower.patch_embed.proj.bias.zero_()
    return tower.eval()


@pytest.mark.parametrize("options", [{}, {"pre_norm": True}, {"class_token": False}],
                         ids=["paper", "pre_norm", "no_cls"])
def test_import_timm_tower(tmp_path, options, capsys):
    tower = timm_tower(**options)
    save_for_hf(tower, str(tmp_path / "timm"), safe_serialization=True)
    assert main(["import", "--from", str(tmp_path / "timm"), "--out", str(tmp_path / "ckpt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "timm"
    encoder, meta = load_encoder(tmp_path / "ckpt")
    x = images()
    with torch.no_grad():
        pooled, tokens = encoder.forward_tokens(x)
        assert max_diff(tokens, tower.forward_features(x)[:, tower.num_prefix_tokens:]) <= TOL
        assert max_diff(pooled, tower(x)) <= TOL
    assert meta["model"]["encoder"] == "mu/8" and meta["model"]["decoder"] == "none"


def test_import_timm_drops_a_classifier_and_refuses_a_learned_table(tmp_path):
    tower = timm_tower(num_classes=10)
    save_for_hf(tower, str(tmp_path / "with_head"), safe_serialization=True)
    model, _, notes = load_pretrained(tmp_path / "with_head")
    assert "10 classes" in notes["dropped_head"]
    with torch.no_grad():
        x = images()
        assert max_diff(model.encoder.forward_tokens(x)[1], tower.forward_features(x)[:, 1:]) <= TOL
    save_for_hf(timm_tower(sincos=False), str(tmp_path / "learned"), safe_serialization=True)
    with pytest.raises(UserError, match="sin-cos"):
        load_pretrained(tmp_path / "learned")


def hf_tower(kind, eps=1e-6):
    common = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                  image_size=IMAGE_SIZE, patch_size=8, hidden_act="gelu", layer_norm_eps=eps)
    if kind == "vit":
        tower = ViTModel(ViTConfig(**common))
    elif kind == "clip":
        tower = CLIPVisionModel(CLIPVisionConfig(**common))
    else:
        tower = SiglipVisionModel(SiglipVisionConfig(**common, vision_use_head=False))
    randomise(tower)
    with torch.no_grad():
        for name, param in tower.named_parameters():
            if "position_embedding" in name:
                table = sincos_2d(GRID, GRID, 32) if kind == "siglip" else sincos_2d_with_cls(GRID, GRID, 32)
                param.copy_(table.reshape(param.shape))
            if name.endswith(("patch_embeddings.projection.bias", "patch_embedding.bias")):
                param.zero_()
    return tower.eval()


@pytest.mark.parametrize("kind", ["vit", "clip", "siglip"])
def test_import_transformers_tower(tmp_path, kind):
    tower = hf_tower(kind)
    tower.save_pretrained(tmp_path / "hf")
    model, _, notes = load_pretrained(tmp_path / "hf")
    assert notes["source"] == "hf"
    assert model.config.pre_norm == (kind == "clip") and model.config.class_token == (kind != "siglip")
    x = images()
    skip = 0 if kind == "siglip" else 1
    with torch.no_grad():
        hidden = tower(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        assert max_diff(model.encode_image(x)[1], hidden[:, skip:]) <= TOL


def test_import_refuses_a_transformers_tower_with_other_eps(tmp_path):
    hf_tower("vit", eps=1e-12).save_pretrained(tmp_path / "hf")
    with pytest.raises(UserError, match="layer_norm_eps"):
        load_pretrained(tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a directory ov2 import can read"):
        load_pretrained(tmp_path / "empty")


def test_import_never_overwrites(tmp_path, capsys):
    save_for_hf(timm_tower(), str(tmp_path / "timm"), safe_serialization=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert main(["import", "--from", str(tmp_path / "timm"), "--out", str(tmp_path / "run")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == "{}\n"
