"""The encoders as timm models: registered names, and a pretrained_cfg that states the true preprocessing."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import openvision2
import openvision2.models  # registers the timm names
from openvision2.interop.spec import EncoderSpec
from openvision2.interop.timm_format import to_timm
from openvision2.preprocess import normalize, pil_to_uint8

SQUASH = dict(interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=1.0,
              crop_mode="squash")


@pytest.mark.parametrize("name,size", [("L/14", 224), ("L/14", 84), ("So400m/14", 384)])
def test_resolve_data_config_gives_the_true_preprocessing(name, size):
    encoder = openvision2.create_encoder(name, size, device="meta")
    assert timm.data.resolve_data_config(model=encoder) == dict(input_size=(3, size, size), **SQUASH)
    assert timm.data.resolve_data_config({}, model=openvision2.create_encoder(name, device="meta"))["input_size"] \
        == (3, 224, 224)


def test_timm_transform_equals_our_preprocessing():
    """timm's eval transform built from the pretrained_cfg gives the tensors our encoder is fed."""
    encoder = openvision2.create_encoder("mu/8", 32)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=encoder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8))
    ours = normalize(pil_to_uint8(image, 32)[None])[0]
    torch.testing.assert_close(transform(image), ours, rtol=0, atol=1e-5)


def test_registered_names_build_the_family():
    names = timm.list_models("openvision2_*")
    assert {"openvision2_vit_large_patch14_224", "openvision2_vit_large_patch14_336",
            "openvision2_vit_so400m_patch14_384", "openvision2_vit_huge_patch14_224",
            "openvision2_vit_giant_patch14_224", "openvision2_vit_base_patch16_224"} <= set(names)
    encoder = timm.create_model("openvision2_vit_large_patch14_336", pretrained=False, device="meta")
    assert isinstance(encoder, openvision2.models.OpenVisionViT)
    assert (encoder.embed_dim, len(encoder.blocks), encoder.patch_embed.patch_size) == (1024, 24, (14, 14))
    assert timm.data.resolve_data_config(model=encoder) == dict(input_size=(3, 336, 336), **SQUASH)
    assert timm.data.resolve_data_config(model=timm.create_model("openvision2_vit_large_patch14_224", img_size=84,
                                                                 device="meta"))["input_size"] == (3, 84, 84)


def test_registered_name_loads_a_timm_export_file(tmp_path):
    ours = openvision2.create_encoder("Ti/16", 32).eval()
    save_file(to_timm(ours.state_dict(), EncoderSpec.of(ours, 32)), tmp_path / "model.safetensors")
    tower = timm.create_model("openvision2_vit_tiny_patch16_224", pretrained=True, img_size=32,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower.forward_tokens(x)[1], ours.forward_tokens(x)[1])
    assert tower.pretrained_cfg["input_size"] == (3, 32, 32)
