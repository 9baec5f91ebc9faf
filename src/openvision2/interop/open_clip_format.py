"""open_clip's VisionTransformer layout (DESIGN.md §9.3), both ways, and its hf-hub directory.

Upstream open_clip expresses the OpenVision ViT exactly through its vision_cfg (no_ln_pre,
pool_type='avg', final_ln_after_pool, norm eps 1e-6, exact GELU, output_tokens). What it cannot do
is build a vision-only model from a directory: `create_model('local-dir:...')` / 'hf-hub:' always
build a CLIP with a text tower. The release therefore needed a fork; our export instead carries a
one-layer, all-zero placeholder text tower (width 4), so that upstream's standard calls load it.
Its `encode_text` is meaningless; `model.visual(images)` returns (pooled, patch tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..preprocess import Preprocess
from .loading import load_failure
from .spec import LAYER_NORM_EPS, EncoderSpec, mlp_ratio

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
# Weight files the released vision-only repos and open_clip itself use, in open_clip's order.
WEIGHT_FILES = (WEIGHTS, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")
PLACEHOLDER_TEXT_CFG = dict(context_length=1, vocab_size=1, width=4, heads=1, layers=1, mlp_ratio=1.0)

_BLOCK_KEYS = (  # (ours under blocks.{i}., open_clip under transformer.resblocks.{i}.)
    ("norm1", "ln_1"), ("attn.qkv", "attn"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
)


def block_key_pairs(depth: int) -> list[tuple[str, str]]:
    """(our key, open_clip's key) for every transformer-block tensor; open_clip's attention holds the
    fused qkv projection as in_proj_weight / in_proj_bias."""
    pairs = []
    for i in range(depth):
        for ours, theirs in _BLOCK_KEYS:
            for kind in ("weight", "bias"):
                theirs_key = (f"attn.in_proj_{kind}" if ours == "attn.qkv" else f"{theirs}.{kind}")
                pairs.append((f"blocks.{i}.{ours}.{kind}", f"transformer.resblocks.{i}.{theirs_key}"))
    return pairs


def vision_cfg(spec: EncoderSpec) -> dict:
    if not spec.class_token:
        raise UserError("open_clip's VisionTransformer always has a CLS token: a model trained with "
                        "class_token=false cannot be exported to open_clip exactly (use --format timm or hf-siglip)")
    return dict(image_size=spec.image_size, patch_size=spec.patch, width=spec.width, layers=spec.depth,
                head_width=spec.width // spec.heads, mlp_ratio=mlp_ratio(spec.width, spec.mlp_dim),
                no_ln_pre=not spec.pre_norm, pool_type="avg", final_ln_after_pool=True, output_tokens=True,
                norm_kwargs=dict(eps=LAYER_NORM_EPS))


def to_open_clip(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Our encoder state -> open_clip VisionTransformer state (no `visual.` prefix); proj = identity."""
    out = {"conv1.weight": state["patch_embed.proj.weight"],
           "class_embedding": state["cls_token"].reshape(spec.width),
           "positional_embedding": spec.pos_table()}
    if spec.pre_norm:
        out.update({"ln_pre.weight": state["norm_pre.weight"], "ln_pre.bias": state["norm_pre.bias"]})
    out.update({theirs: state[ours] for ours, theirs in block_key_pairs(spec.depth)})
    out["ln_post.weight"], out["ln_post.bias"] = state["fc_norm.weight"], state["fc_norm.bias"]
    out["proj"] = torch.eye(spec.width)  # OV2 has no head; identity keeps the pooled feature as is
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def from_open_clip(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """open_clip VisionTransformer state (no prefix) -> our encoder state. The position table must
    be this project's sin-cos table (our encoder computes it, it cannot hold a learned one)."""
    expected = spec.pos_table()
    table = state["positional_embedding"].float()
    if table.shape != expected.shape:
        raise UserError(f"positional_embedding has shape {tuple(table.shape)}, expected {tuple(expected.shape)} "
                        f"for a {spec.grid}x{spec.grid} grid: check image_size in open_clip_config.json")
    gap = (table - expected).abs().max().item()
    if gap > 1e-4:
        raise UserError(f"positional_embedding differs from OpenVision's fixed 2-D sin-cos table (max diff "
                        f"{gap:.3g}): only encoders with that table (DESIGN.md §1.2) can be imported exactly")
    out = {"cls_token": state["class_embedding"].reshape(1, 1, spec.width),
           "patch_embed.proj.weight": state["conv1.weight"]}
    if spec.pre_norm:
        out.update({"norm_pre.weight": state["ln_pre.weight"], "norm_pre.bias": state["ln_pre.bias"]})
    out.update({ours: state[theirs] for ours, theirs in block_key_pairs(spec.depth)})
    out["fc_norm.weight"], out["fc_norm.bias"] = state["ln_post.weight"], state["ln_post.bias"]
    return {k: v.float().contiguous() for k, v in out.items()}


# --- reading a directory ------------------------------------------------------------------------

def _refuse_unless(condition: bool, what: str) -> None:
    if not condition:
        raise UserError(f"open_clip vision_cfg has {what}: not the OpenVision ViT (DESIGN.md §9.3), so it cannot be "
                        "imported exactly")


def spec_from_vision_cfg(cfg: dict, state: dict[str, torch.Tensor]) -> EncoderSpec:
    """Check that the config describes an OpenVision ViT and read its shape (the MLP width and
    depth from the weights, which are authoritative)."""
    _refuse_unless(not cfg.get("timm_model_name"), "a timm tower")
    _refuse_unless(not isinstance(cfg.get("layers"), (list, tuple)), "a ResNet tower")
    _refuse_unless(cfg.get("pool_type", "tok") == "avg", f"pool_type={cfg.get('pool_type', 'tok')!r} (need 'avg')")
    _refuse_unless(bool(cfg.get("final_ln_after_pool")), "final_ln_after_pool=false (need true)")
    _refuse_unless(not cfg.get("attentional_pool"), "an attentional pooler")
    _refuse_unless(cfg.get("ls_init_value") is None, "LayerScale")
    eps = (cfg.get("norm_kwargs") or {}).get("eps", 1e-5)
    _refuse_unless(abs(eps - LAYER_NORM_EPS) < 1e-12, f"LayerNorm eps {eps} (need {LAYER_NORM_EPS})")
    for flag in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"):
        _refuse_unless(not cfg.get(flag), f"{flag}=true")
    image_size, patch = cfg.get("image_size", 224), cfg.get("patch_size", 16)
    if isinstance(image_size, (list, tuple)):
        _refuse_unless(image_size[0] == image_size[1], f"a non-square image_size {image_size}")
        image_size = image_size[0]
    width = state["conv1.weight"].shape[0]
    depth = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    pre_norm = not cfg.get("no_ln_pre", False)
    _refuse_unless(pre_norm == ("ln_pre.weight" in state), "no_ln_pre disagreeing with the weights")
    spec = EncoderSpec(width=width, depth=depth, heads=width // cfg.get("head_width", 64),
                       mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], patch=int(patch),
                       image_size=int(image_size), pre_norm=pre_norm, class_token=True)
    spec.check_image_size()
    return spec


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            try:
                if path.suffix == ".safetensors":
                    from safetensors.torch import load_file
                    return load_file(path)
                return torch.load(path, map_location="cpu", weights_only=True)  # never runs code
            except Exception as err:  # SafetensorError, pickle errors: an unreadable file
                raise UserError(f"cannot read {path}: {load_failure(err)}") from None
    raise UserError(f"no open_clip weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's keys: full CLIP checkpoints prefix them with `visual.`, vision-only ones may not."""
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return dict(state)


def read_open_clip_dir(directory: str | Path) -> tuple[EncoderSpec, dict[str, torch.Tensor], Preprocess, dict]:
    """(spec, our encoder state, preprocessing, notes) from an open_clip hf-hub style directory."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file():
        raise UserError(f"{directory} has no {CONFIG}: pass an open_clip (hf-hub layout) directory")
    try:
        config = json.loads((directory / CONFIG).read_text())
        model_cfg = config["model_cfg"]
        cfg = model_cfg["vision_cfg"]
    except (ValueError, KeyError) as err:
        raise UserError(f"{directory / CONFIG} is not an open_clip config (model_cfg.vision_cfg): {err}") from None
    state = vision_state(_load_weights(directory))
    if "conv1.weight" not in state:
        raise UserError(f"the weights in {directory} have no conv1.weight: not an open_clip VisionTransformer")
    spec = spec_from_vision_cfg(cfg, state)
    notes = {}
    proj = state.get("proj")
    if proj is not None and not (proj.shape[0] == proj.shape[1] and torch.equal(proj, torch.eye(proj.shape[0]))):
        # OV2 has no head (DESIGN.md §9.3): a projection only maps the pooled vector, never the tokens.
        notes["dropped_proj"] = list(proj.shape)
    try:
        ours = from_open_clip(state, spec)
    except KeyError as err:
        raise UserError(f"the weights in {directory} lack {err.args[0]}: not an OpenVision ViT checkpoint") from None
    preprocess = Preprocess.from_dict({"size": spec.image_size, **config.get("preprocess_cfg", {})})
    return spec, ours, preprocess, notes


# --- writing a directory ------------------------------------------------------------------------

def save_open_clip_dir(state: dict[str, torch.Tensor], spec: EncoderSpec, preprocess: Preprocess,
                       directory: Path) -> None:
    """Write open_clip_config.json + open_clip_model.safetensors, checked by loading them into
    open_clip's own CLIP class first (strict), so an export open_clip cannot load is never written."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    model_cfg = dict(embed_dim=spec.width, vision_cfg=vision_cfg(spec), text_cfg=PLACEHOLDER_TEXT_CFG)
    model = CLIP(**model_cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    model.visual.load_state_dict(to_open_clip(state, spec), strict=True)
    config = dict(model_cfg=model_cfg, preprocess_cfg=preprocess.open_clip(),
                  openvision2=dict(note="vision-only OpenVision encoder: use model.visual(images) -> (pooled, "
                                        "patch tokens); the text tower is an all-zero placeholder so that "
                                        "open_clip.create_model accepts this directory"))
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, directory / WEIGHTS)
