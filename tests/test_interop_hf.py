"""Hugging Face exports (ViTModel, CLIPVisionModel, SiglipVisionModel), loaded with AutoModel and
AutoImageProcessor and compared with transformers' own forward pass; a LLaVA built on the export."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration)

from openvision2.errors import UserError
from openvision2.interop import export_checkpoint
from openvision2.preprocess import normalize, pil_to_uint8

from interop_fixtures import IMAGE_SIZE, TOL, images, max_diff, tiny_checkpoint

CASES = [("hf", {}, "ViTModel"), ("hf-clip", {"pre_norm": True}, "CLIPVisionModel"),
         ("hf-siglip", {"class_token": False}, "SiglipVisionModel")]


def final_norm(tower):
    """The class's last LayerNorm, which holds our pooled-feature norm (ViT `layernorm`,
    CLIP/SigLIP `post_layernorm`; under `vision_model` in some transformers versions)."""
    for owner in (tower, getattr(tower, "vision_model", None)):
        for name in ("layernorm", "post_layernorm"):
            if owner is not None and hasattr(owner, name):
                return getattr(owner, name)
    raise AssertionError("no final norm")


@pytest.mark.parametrize("fmt,options,class_name", CASES, ids=[c[0] for c in CASES])
def test_hf_export_matches_transformers_forward(tmp_path, fmt, options, class_name):
    model, _ = tiny_checkpoint(tmp_path / "ckpt", **options)
    out = export_checkpoint(tmp_path / "ckpt", fmt, tmp_path / fmt)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}

    tower = AutoModel.from_pretrained(out).eval()
    assert type(tower).__name__ == class_name
    x = images()
    skip = 0 if options.get("class_token") is False else 1
    with torch.no_grad():
        hidden = tower(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        pooled, tokens = model.encoder.forward_tokens(x)
    assert max_diff(hidden[:, skip:], tokens) <= TOL
    assert max_diff(final_norm(tower)(hidden[:, skip:].mean(dim=1)), pooled) <= TOL


@pytest.mark.parametrize("fmt,options,class_name", CASES, ids=[c[0] for c in CASES])
def test_hf_image_processor_matches_our_preprocessing(tmp_path, fmt, options, class_name):
    tiny_checkpoint(tmp_path / "ckpt", **options)
    out = export_checkpoint(tmp_path / "ckpt", fmt, tmp_path / fmt)
    processor = AutoImageProcessor.from_pretrained(out)
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    theirs = processor(images=square, return_tensors="pt")["pixel_values"]
    ours = normalize(pil_to_uint8(square, IMAGE_SIZE)[None])
    assert max_diff(theirs, ours) <= 1e-5  # same size: rescale and normalise only
    # a larger square image goes through the same bilinear resize (PIL vs. the processor's own)
    big = Image.fromarray(rng.integers(0, 256, (4 * IMAGE_SIZE, 4 * IMAGE_SIZE, 3), dtype=np.uint8))
    resized = processor(images=big, return_tensors="pt")["pixel_values"]
    assert resized.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (resized - normalize(pil_to_uint8(big, IMAGE_SIZE)[None])).abs().mean() < 0.05


@pytest.mark.parametrize("fmt,options", [("hf", {"pre_norm": True}), ("hf", {"class_token": False}),
                                         ("hf-clip", {}), ("hf-siglip", {}), ("hf-clip", {"class_token": False})])
def test_hf_refuses_models_it_cannot_express(tmp_path, fmt, options):
    tiny_checkpoint(tmp_path / "ckpt", **options)
    with pytest.raises(UserError, match="cannot be expressed exactly"):
        export_checkpoint(tmp_path / "ckpt", fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt,options,strategy", [("hf", {}, "default"), ("hf-clip", {"pre_norm": True}, "default"),
                                                  ("hf-siglip", {"class_token": False}, "full")],
                         ids=["hf", "hf-clip", "hf-siglip"])
def test_llava_takes_the_hf_export_as_vision_tower(tmp_path, fmt, options, strategy):
    """transformers' LlavaForConditionalGeneration with a tiny random Llama and the export as tower."""
    model, _ = tiny_checkpoint(tmp_path / "ckpt", **options)
    out = export_checkpoint(tmp_path / "ckpt", fmt, tmp_path / fmt)
    text_config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    config = LlavaConfig(vision_config=AutoConfig.from_pretrained(out), text_config=text_config, image_token_id=63,
                         vision_feature_layer=-1, vision_feature_select_strategy=strategy)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.vision_tower = AutoModel.from_pretrained(out).eval()

    processor = AutoImageProcessor.from_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    num_patches = (IMAGE_SIZE // 8) ** 2
    input_ids = torch.tensor([[1] + [63] * num_patches + [5, 6, 7]])
    with torch.no_grad():
        logits = llava(input_ids=input_ids, pixel_values=pixel_values).logits
        features = llava.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                                  vision_feature_select_strategy=strategy)
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
        ours = llava.model.multi_modal_projector(model.encoder.forward_tokens(pixel_values)[1])
    assert logits.shape == (1, input_ids.shape[1], 64) and torch.isfinite(logits).all()
    assert max_diff(features, ours) <= TOL  # LLaVA sees exactly the tokens OV2's decoder saw
