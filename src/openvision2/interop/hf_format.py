"""Hugging Face transformers vision towers: ViTModel ("hf"), CLIPVisionModel ("hf-clip"), SiglipVisionModel
("hf-siglip"), each written with transformers' own save_pretrained so AutoModel.from_pretrained loads it.

Each class fixes two things our encoder makes optional (STYLE.md "Export formats"):
                  CLS token   LayerNorm before the blocks
  ViTModel          yes          no      <- the paper's ViT
  CLIPVisionModel   yes          yes     <- train with pre_norm=true (LLaVA-1.5 loads only this class)
  SiglipVisionModel no           no      <- train with class_token=false
A missing pre-LayerNorm cannot be emulated and a CLS token that attends cannot be dropped, so a
model is exported only to the class that computes exactly what it computes.

In every class hidden_states[-1] is the last block's output before any final LayerNorm: the patch
tokens OV2's decoder reads are hidden_states[-1][:, 1:] (ViT, CLIP) or hidden_states[-1] (SigLIP).
The final norm of each class (ViT `layernorm`, CLIP/SigLIP `post_layernorm`) holds our pooled-feature
LayerNorm, so the pooled feature is that norm applied to the mean of those tokens. ViT's pooler
(dense + tanh on the CLS token, not part of OpenVision) is written as identity and zero so the
directory loads without randomly initialised weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .preprocessing import Preprocess
from .spec import LAYER_NORM_EPS, EncoderSpec, split_qkv
from .timm_format import to_timm

KINDS = {"hf": "vit", "hf-clip": "clip", "hf-siglip": "siglip"}
_NEEDS = {  # kind -> (class_token, pre_norm) the class computes
    "vit": (True, False), "clip": (True, True), "siglip": (False, False),
}
_TRAIN_HINT = {"vit": "the default model (class_token=true pre_norm=false)",
               "clip": "train with pre_norm=true", "siglip": "train with class_token=false"}


def check_expressible(spec: EncoderSpec, kind: str) -> None:
    class_token, pre_norm = _NEEDS[kind]
    if (spec.class_token, spec.pre_norm) == (class_token, pre_norm):
        return
    fits = [k for k, v in KINDS.items() if _NEEDS[v] == (spec.class_token, spec.pre_norm)]
    cls_name = {"vit": "ViTModel", "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}[kind]
    raise UserError(
        f"{cls_name} needs {'a' if class_token else 'no'} CLS token and {'a' if pre_norm else 'no'} pre-LayerNorm, "
        f"but this model has class_token={str(spec.class_token).lower()} pre_norm={str(spec.pre_norm).lower()}: "
        f"it cannot be expressed exactly ({_TRAIN_HINT[kind]} to get such a model; "
        f"formats that fit this one: {', '.join(fits + ['timm'])})")


def _config(spec: EncoderSpec, kind: str):
    common = dict(hidden_size=spec.width, num_hidden_layers=spec.depth, num_attention_heads=spec.heads,
                  intermediate_size=spec.mlp_dim, image_size=spec.image_size, patch_size=spec.patch,
                  num_channels=3, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS, attention_dropout=0.0)
    if kind == "vit":
        from transformers import ViTConfig
        return ViTConfig(**common, qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         architectures=["ViTModel"])
    if kind == "clip":
        from transformers import CLIPVisionConfig
        return CLIPVisionConfig(**common, projection_dim=spec.width, architectures=["CLIPVisionModel"])
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(**common, vision_use_head=False, architectures=["SiglipVisionModel"])


def _model_class(kind: str):
    import transformers

    return {"vit": transformers.ViTModel, "clip": transformers.CLIPVisionModel,
            "siglip": transformers.SiglipVisionModel}[kind]


def _named(timm_state: dict[str, torch.Tensor], spec: EncoderSpec, kind: str, legacy: bool) -> dict[str, torch.Tensor]:
    """The class's state dict from timm-layout weights. legacy: the key names of transformers 4.x
    (ViT `encoder.layer.{i}.attention.attention.query`, CLIP/SigLIP under `vision_model.`)."""
    s, out = timm_state, {}
    width = spec.width

    def linear(prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = weight, bias

    def norm(prefix: str, ours: str) -> None:
        linear(prefix, s[f"{ours}.weight"], s[f"{ours}.bias"])

    pos = s["pos_embed"][0]
    if kind == "vit":
        out["embeddings.cls_token"] = s["cls_token"]
        out["embeddings.position_embeddings"] = pos[None]
        linear("embeddings.patch_embeddings.projection", s["patch_embed.proj.weight"], s["patch_embed.proj.bias"])
    else:
        if spec.class_token:
            out["embeddings.class_embedding"] = s["cls_token"].reshape(width)
        out["embeddings.patch_embedding.weight"] = s["patch_embed.proj.weight"]
        if kind == "siglip":
            out["embeddings.patch_embedding.bias"] = s["patch_embed.proj.bias"]
        out["embeddings.position_embedding.weight"] = pos
        if kind == "clip":
            norm("pre_layrnorm", "norm_pre")
    for i in range(spec.depth):
        q, k, v = split_qkv(s[f"blocks.{i}.attn.qkv.weight"])
        qb, kb, vb = split_qkv(s[f"blocks.{i}.attn.qkv.bias"])
        proj = (s[f"blocks.{i}.attn.proj.weight"], s[f"blocks.{i}.attn.proj.bias"])
        fc1 = (s[f"blocks.{i}.mlp.fc1.weight"], s[f"blocks.{i}.mlp.fc1.bias"])
        fc2 = (s[f"blocks.{i}.mlp.fc2.weight"], s[f"blocks.{i}.mlp.fc2.bias"])
        if kind == "vit" and legacy:
            p = f"encoder.layer.{i}"
            names = (f"{p}.attention.attention.query", f"{p}.attention.attention.key",
                     f"{p}.attention.attention.value", f"{p}.attention.output.dense",
                     f"{p}.intermediate.dense", f"{p}.output.dense", f"{p}.layernorm_before", f"{p}.layernorm_after")
        elif kind == "vit":
            p = f"layers.{i}"
            names = (f"{p}.attention.q_proj", f"{p}.attention.k_proj", f"{p}.attention.v_proj",
                     f"{p}.attention.o_proj", f"{p}.mlp.fc1", f"{p}.mlp.fc2", f"{p}.layernorm_before",
                     f"{p}.layernorm_after")
        else:
            p = f"encoder.layers.{i}"
            names = (f"{p}.self_attn.q_proj", f"{p}.self_attn.k_proj", f"{p}.self_attn.v_proj",
                     f"{p}.self_attn.out_proj", f"{p}.mlp.fc1", f"{p}.mlp.fc2", f"{p}.layer_norm1",
                     f"{p}.layer_norm2")
        for name, (weight, bias) in zip(names, ((q, qb), (k, kb), (v, vb), proj, fc1, fc2)):
            linear(name, weight, bias)
        norm(names[6], f"blocks.{i}.norm1")
        norm(names[7], f"blocks.{i}.norm2")
    if kind == "vit":
        norm("layernorm", "fc_norm")
        linear("pooler.dense", torch.eye(width), torch.zeros(width))
    else:
        norm("post_layernorm", "fc_norm")
        if legacy:
            out = {f"vision_model.{k}": v for k, v in out.items()}
    return out


def to_hf(state: dict[str, torch.Tensor], spec: EncoderSpec, kind: str):
    """A transformers model (eval mode) holding our encoder's weights, checked strictly."""
    check_expressible(spec, kind)
    model = _model_class(kind)(_config(spec, kind)).eval()
    timm_state = to_timm(state, spec)
    wanted = set(model.state_dict())
    for legacy in (False, True):
        named = _named(timm_state, spec, kind, legacy)
        if set(named) == wanted:
            model.load_state_dict(named, strict=True)
            return model
    import transformers
    raise UserError(f"transformers {transformers.__version__} names the {type(model).__name__} weights in a way "
                    f"this exporter does not know (e.g. {sorted(wanted)[0]}): use transformers 4.45-5.x")


def _image_processor(kind: str, preprocess: Preprocess):
    import transformers

    cls = {"vit": transformers.ViTImageProcessor, "clip": transformers.CLIPImageProcessor,
           "siglip": transformers.SiglipImageProcessor}[kind]
    return cls(**preprocess.hf("clip" if kind == "clip" else kind))


def save_hf_dir(state: dict[str, torch.Tensor], spec: EncoderSpec, preprocess: Preprocess, directory: Path,
                fmt: str) -> None:
    kind = KINDS[fmt]
    model = to_hf(state, spec, kind)
    model.save_pretrained(directory, safe_serialization=True)
    _image_processor(kind, preprocess).save_pretrained(directory)
