"""timm's hub format (config.json + model.safetensors, timm/models/_hub.py::save_for_hf).

A stock timm VisionTransformer expresses the OpenVision ViT exactly (STYLE.md): CLS token, no
pre-norm (or pre_norm for the CLIP-style option), global_pool='avg' with fc_norm after the pool,
no final norm on the tokens, the sin-cos table materialised in pos_embed (zero CLS row) and a zero
patch bias. Users load it with timm.create_model('local-dir:DIR', pretrained=True) or
timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file='DIR/model.safetensors'),
**model_args); model(x) is the pooled feature and model.forward_features(x)[:, 1:] the tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .open_clip_format import _mlp_ratio
from .preprocessing import Preprocess
from .spec import EncoderSpec

ARCHITECTURE = "vit_base_patch16_224"  # any registered ViT: model_args set every shape and option


def model_args(spec: EncoderSpec) -> dict:
    """Keyword arguments that make timm's VisionTransformer this encoder (eps 1e-6 and exact GELU
    are timm's defaults)."""
    return dict(img_size=spec.image_size, patch_size=spec.patch, embed_dim=spec.width, depth=spec.depth,
                num_heads=spec.heads, mlp_ratio=_mlp_ratio(spec.width, spec.mlp_dim), class_token=spec.class_token,
                pre_norm=spec.pre_norm, global_pool="avg", fc_norm=True, num_classes=0)


def to_timm(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Our encoder state is already in timm's keys; add what our encoder computes instead of storing."""
    out = dict(state)
    out["pos_embed"] = spec.pos_table()[None]
    if not spec.pre_norm:  # timm gives the patch conv a bias unless pre_norm; ours has none
        out["patch_embed.proj.bias"] = torch.zeros(spec.width)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def create_timm_model(spec: EncoderSpec) -> torch.nn.Module:
    import timm

    return timm.create_model(ARCHITECTURE, pretrained=False, **model_args(spec))


def save_timm_dir(state: dict[str, torch.Tensor], spec: EncoderSpec, preprocess: Preprocess, directory: Path) -> None:
    """Load the weights into a stock timm model (strict) and let timm write its own hub files."""
    from timm.models import save_for_hf

    model = create_timm_model(spec)
    model.load_state_dict(to_timm(state, spec), strict=True)
    save_for_hf(model, str(directory), model_args=model_args(spec), safe_serialization=True,
                data_config=preprocess.timm())
    # Record the two ways to load it next to the files (timm ignores unknown keys).
    config = json.loads((directory / "config.json").read_text())
    config["openvision2"] = dict(load="timm.create_model('local-dir:<this directory>', pretrained=True)",
                                 tokens="model.forward_features(x)[:, model.num_prefix_tokens:]")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
