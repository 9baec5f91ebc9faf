"""timm's hub format (config.json + model.safetensors, timm/models/_hub.py::save_for_hf).

A stock timm VisionTransformer expresses the OpenVision ViT exactly (STYLE.md): CLS token, no
pre-norm (or pre_norm for the CLIP-style option), global_pool='avg' with fc_norm after the pool,
no final norm on the tokens, the sin-cos table materialised in pos_embed (zero CLS row) and a zero
patch bias. Users load it with timm.create_model('local-dir:DIR', pretrained=True) or
timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file='DIR/model.safetensors'),
**model_args); model(x) is the pooled feature and model.forward_features(x)[:, 1:] the tokens.
read_timm_dir goes the other way, checking every option on the module timm builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..preprocess import Preprocess
from .spec import LAYER_NORM_EPS, EncoderSpec, mlp_ratio

ARCHITECTURE = "vit_base_patch16_224"  # any registered ViT: model_args set every shape and option


def model_args(spec: EncoderSpec) -> dict:
    """Keyword arguments that make timm's VisionTransformer this encoder (eps 1e-6 and exact GELU
    are timm's defaults)."""
    return dict(img_size=spec.image_size, patch_size=spec.patch, embed_dim=spec.width, depth=spec.depth,
                num_heads=spec.heads, mlp_ratio=mlp_ratio(spec.width, spec.mlp_dim), class_token=spec.class_token,
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
    config = json.loads((directory / "config.json").read_text())
    # The architecture's own pretrained_cfg names ImageNet weights (tag, license): not these weights.
    config["pretrained_cfg"].pop("license", None)
    config["pretrained_cfg"]["tag"] = "openvision2"
    # Record how to load it next to the files (timm ignores unknown keys).
    config["openvision2"] = dict(load="timm.create_model('local-dir:<this directory>', pretrained=True)",
                                 tokens="model.forward_features(x)[:, model.num_prefix_tokens:]")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# --- import: a timm VisionTransformer (its hub directory) -> our encoder ------------------------

def from_timm(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """timm-layout weights -> our encoder state. What our encoder computes instead of storing must
    hold the values it computes: the sin-cos table and a zero patch bias."""
    from ..errors import UserError

    table = state["pos_embed"].reshape(-1, spec.width).float()
    expected = spec.pos_table()
    if table.shape != expected.shape or (table - expected).abs().max().item() > 1e-4:
        raise UserError("the position embedding is not OpenVision's fixed 2-D sin-cos table (DESIGN.md §1.2), e.g. it "
                        "was trained or resampled: such an encoder cannot be imported exactly")
    bias = state.get("patch_embed.proj.bias")
    if bias is not None and bias.abs().max().item() > 0:
        raise UserError("the patch embedding has a non-zero bias, which OpenVision's bias-free patch "
                        "convolution cannot hold: such an encoder cannot be imported exactly")
    return {k: v.float().contiguous() for k, v in state.items() if k not in ("pos_embed", "patch_embed.proj.bias")}


def _spec_of_timm_model(model, where: str) -> EncoderSpec:
    """Check, on the module timm built, every option that makes a VisionTransformer the OpenVision ViT."""
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    from ..errors import UserError

    def refuse_unless(condition: bool, what: str) -> None:
        if not condition:
            raise UserError(f"{where} is a timm model with {what}: not the OpenVision ViT, so it cannot be "
                            "imported exactly")

    refuse_unless(isinstance(model, VisionTransformer), f"class {type(model).__name__} (need VisionTransformer)")
    refuse_unless(model.global_pool == "avg", f"global_pool={model.global_pool!r} (need 'avg')")
    refuse_unless(isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm),
                  "a final norm on the tokens (need fc_norm after the pool only)")
    refuse_unless(model.num_reg_tokens == 0 and not model.no_embed_class and model.pos_embed is not None,
                  "register tokens or a position table that skips the CLS token")
    refuse_unless(getattr(model, "attn_pool", None) is None, "an attention pooler")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    refuse_unless(all(abs(m.eps - LAYER_NORM_EPS) < 1e-12 for m in norms), "LayerNorm eps other than 1e-6")
    for block in model.blocks:
        refuse_unless(isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity), "LayerScale")
        refuse_unless(isinstance(block.attn.q_norm, nn.Identity) and block.attn.qkv.bias is not None,
                      "q/k norms or bias-free q/k/v")
        refuse_unless(isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity)
                      and isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity), "extra norms in blocks")
        act = getattr(block.mlp, "act", None)
        refuse_unless(isinstance(act, nn.GELU) and act.approximate == "none", "an activation other than exact GELU")
    size, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    refuse_unless(size[0] == size[1] and patch[0] == patch[1], "a non-square image or patch size")
    spec = EncoderSpec(width=model.embed_dim, depth=len(model.blocks), heads=model.blocks[0].attn.num_heads,
                       mlp_dim=model.blocks[0].mlp.fc1.out_features, patch=patch[0], image_size=size[0],
                       pre_norm=not isinstance(model.norm_pre, nn.Identity), class_token=model.cls_token is not None)
    spec.check_image_size()
    return spec


def read_timm_dir(directory: str | Path) -> tuple[EncoderSpec, dict[str, torch.Tensor], Preprocess, dict]:
    """(spec, our encoder state, preprocessing, notes) from a timm hub directory, loaded with
    timm.create_model('local-dir:...', pretrained=True) as timm's users do."""
    import timm

    model = timm.create_model(f"local-dir:{Path(directory).resolve()}", pretrained=True)
    spec = _spec_of_timm_model(model, str(directory))
    state = model.state_dict()
    notes = {}
    if model.num_classes:
        notes["dropped_head"] = f"classifier with {model.num_classes} classes"
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    cfg = model.pretrained_cfg
    preprocess = Preprocess.from_dict(dict(
        size=spec.image_size, mean=cfg.get("mean"), std=cfg.get("std"), interpolation=cfg.get("interpolation", "bilinear"),
        resize_mode="squash" if cfg.get("crop_mode") == "squash" else "shortest"))
    return spec, from_timm(state, spec), preprocess, notes
