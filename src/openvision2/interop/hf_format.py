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

read_hf_dir goes the other way, for a tower tuned inside a VLM and saved by transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..preprocess import PIL_RESAMPLE, Preprocess
from .spec import LAYER_NORM_EPS, EncoderSpec, split_qkv
from .timm_format import from_timm, to_timm

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
    fits += ["open_clip", "timm"] if spec.class_token else ["timm"]
    cls_name = {"vit": "ViTModel", "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}[kind]
    raise UserError(
        f"{cls_name} needs {'a' if class_token else 'no'} CLS token and {'a' if pre_norm else 'no'} pre-LayerNorm, "
        f"but this model has class_token={str(spec.class_token).lower()} pre_norm={str(spec.pre_norm).lower()}: "
        f"it cannot be expressed exactly ({_TRAIN_HINT[kind]} to get such a model; "
        f"formats that fit this one: {', '.join(fits)})")


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


def _key_pairs(spec: EncoderSpec, kind: str, legacy: bool) -> list[tuple[str, str, int | None]]:
    """(class key, timm key, which third of a packed q/k/v or None). legacy: the key names of
    transformers 4.x (ViT `encoder.layer.{i}.attention.attention.query`, CLIP/SigLIP under `vision_model.`)."""
    pairs: list[tuple[str, str, int | None]] = []

    def both(theirs: str, ours: str, part: int | None = None) -> None:
        pairs.extend([(f"{theirs}.weight", f"{ours}.weight", part), (f"{theirs}.bias", f"{ours}.bias", part)])

    if kind == "vit":
        pairs += [("embeddings.cls_token", "cls_token", None), ("embeddings.position_embeddings", "pos_embed", None)]
        both("embeddings.patch_embeddings.projection", "patch_embed.proj")
    else:
        if spec.class_token:
            pairs.append(("embeddings.class_embedding", "cls_token", None))
        pairs.append(("embeddings.patch_embedding.weight", "patch_embed.proj.weight", None))
        if kind == "siglip":
            pairs.append(("embeddings.patch_embedding.bias", "patch_embed.proj.bias", None))
        pairs.append(("embeddings.position_embedding.weight", "pos_embed", None))
        if kind == "clip":
            both("pre_layrnorm", "norm_pre")
    for i in range(spec.depth):
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
        b = f"blocks.{i}"
        for part in range(3):
            both(names[part], f"{b}.attn.qkv", part)
        for name, ours in zip(names[3:], ("attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")):
            both(name, f"{b}.{ours}")
    both("layernorm" if kind == "vit" else "post_layernorm", "fc_norm")
    if legacy and kind != "vit":
        pairs = [(f"vision_model.{theirs}", ours, part) for theirs, ours, part in pairs]
    return pairs


def _pairs_for(model, spec: EncoderSpec, kind: str) -> list[tuple[str, str, int | None]]:
    """The key pairs whose class keys are exactly this transformers version's (ViT's pooler aside)."""
    wanted = {k for k in model.state_dict() if "pooler." not in k}
    for legacy in (False, True):
        pairs = _key_pairs(spec, kind, legacy)
        if {theirs for theirs, _, _ in pairs} == wanted:
            return pairs
    import transformers
    raise UserError(f"transformers {transformers.__version__} names the {type(model).__name__} weights in a way "
                    f"this converter does not know (e.g. {sorted(wanted)[0]}): use transformers 4.45-5.x")


def to_hf(state: dict[str, torch.Tensor], spec: EncoderSpec, kind: str):
    """A transformers model (eval mode) holding our encoder's weights, loaded strictly."""
    check_expressible(spec, kind)
    model = _model_class(kind)(_config(spec, kind)).eval()
    timm_state, shapes = to_timm(state, spec), model.state_dict()
    named = {}
    for theirs, ours, part in _pairs_for(model, spec, kind):
        value = timm_state[ours] if part is None else split_qkv(timm_state[ours])[part]
        named[theirs] = value.reshape(shapes[theirs].shape)
    for key in shapes:
        if "pooler.dense.weight" in key:
            named[key] = torch.eye(spec.width)
        elif "pooler.dense.bias" in key:
            named[key] = torch.zeros(spec.width)
    model.load_state_dict(named, strict=True)
    return model


def from_hf(model, spec: EncoderSpec, kind: str) -> dict[str, torch.Tensor]:
    """A transformers model's weights in timm's layout (pos_embed and a zero patch bias included)."""
    state, parts = model.state_dict(), {}
    for theirs, ours, part in _pairs_for(model, spec, kind):
        parts.setdefault(ours, {})[part] = state[theirs]
    out = {}
    for ours, pieces in parts.items():
        value = pieces[None] if None in pieces else torch.cat([pieces[0], pieces[1], pieces[2]], dim=0)
        if ours in ("cls_token", "pos_embed"):
            value = value.reshape(1, -1, spec.width)
        out[ours] = value.float().contiguous()
    if kind == "clip":  # CLIP's patch conv has no bias, as ours
        out["patch_embed.proj.bias"] = torch.zeros(spec.width)
    return out


HF_KINDS = {"vit": "vit", "clip_vision_model": "clip", "siglip_vision_model": "siglip"}


def _preprocess_from(directory: Path, image_size: int) -> Preprocess:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return Preprocess(size=image_size)
    data = json.loads(path.read_text())
    resample = {code: name for name, code in PIL_RESAMPLE.items()}.get(data.get("resample", 2), "bilinear")
    cropped = data.get("do_center_crop", False)
    return Preprocess.from_dict(dict(size=image_size, mean=data.get("image_mean"), std=data.get("image_std"),
                                     interpolation=resample, resize_mode="shortest" if cropped else "squash"))


def read_hf_dir(directory: str | Path) -> tuple[EncoderSpec, dict[str, torch.Tensor], Preprocess, dict]:
    """(spec, our encoder state, preprocessing, notes) from a ViTModel / CLIPVisionModel /
    SiglipVisionModel directory, loaded with AutoConfig / AutoModel as their users do."""
    from transformers import AutoConfig

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    config = getattr(config, "vision_config", None) or config  # a full CLIP / SigLIP: take its vision half
    kind = HF_KINDS.get(config.model_type)
    if kind is None:
        raise UserError(f"{directory} holds a transformers {config.model_type!r} model: import takes ViTModel, "
                        "CLIPVisionModel or SiglipVisionModel directories")

    def refuse_unless(condition: bool, what: str) -> None:
        if not condition:
            raise UserError(f"{directory} has {what}: not the OpenVision ViT, so it cannot be imported exactly")

    refuse_unless(abs(config.layer_norm_eps - LAYER_NORM_EPS) < 1e-12, f"layer_norm_eps {config.layer_norm_eps}")
    refuse_unless(config.hidden_act == "gelu", f"hidden_act {config.hidden_act!r} (need exact 'gelu')")
    refuse_unless(kind != "vit" or getattr(config, "qkv_bias", True), "q/k/v without bias")
    image_size, patch = config.image_size, config.patch_size
    refuse_unless(isinstance(image_size, int) and isinstance(patch, int), "a non-square image or patch size")
    spec = EncoderSpec(width=config.hidden_size, depth=config.num_hidden_layers, heads=config.num_attention_heads,
                       mlp_dim=config.intermediate_size, patch=patch, image_size=image_size,
                       pre_norm=kind == "clip", class_token=kind != "siglip")
    spec.check_image_size()
    # The vision class, as LLaVA loads CLIP: it also reads the vision half of a full CLIP / SigLIP directory.
    model = _model_class(kind).from_pretrained(directory)
    notes = {}
    if kind == "siglip" and getattr(config, "vision_use_head", False):
        notes["dropped_head"] = "SigLIP attention-pooling head (not part of OpenVision)"
    return spec, from_timm(from_hf(model, spec, kind), spec), _preprocess_from(directory, image_size), notes


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
