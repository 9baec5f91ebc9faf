"""`ov2 import`: an OpenVision encoder from another library's directory -> this project.

Sources, told apart by their files:
- open_clip (open_clip_config.json): the released OpenVision 2 vision-only weights (DESIGN.md §9.3);
- timm hub (config.json with `architecture`): e.g. a tower tuned inside a timm-based VLM;
- transformers (config.json with `model_type` vit / clip_vision_model / siglip_vision_model):
  e.g. a tower tuned inside LLaVA.
Each must be exactly the OpenVision ViT (sin-cos table, bias-free patches, ...); anything else is
refused with the reason. The result is an encoder-only OpenVision2 (ModelConfig.decoder == "none"):
it encodes images like any checkpoint (`checkpoint.load_checkpoint` / `load_encoder`), exports to
every format, and refuses to caption. Its config.json keeps the source's preprocessing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import UserError
from ..models.openvision2 import OpenVision2
from ..preprocess import Preprocess
from .loading import load_failure

SOURCES = ("open_clip", "timm", "hf")


def detect_source(directory: str | Path) -> str:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory: pass the folder of an open_clip, timm or "
                        "transformers export (e.g. a downloaded UCSC-VLAA/openvision2-* repo)")
    if (directory / "open_clip_config.json").is_file():
        return "open_clip"
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if "auto_map" in config:  # transformers' trust_remote_code models
        raise UserError(f"{directory} needs its own Python code to load (auto_map in config.json), and ov2 never "
                        "runs code from a model directory: export it as a plain ViTModel / CLIPVisionModel first")
    if "architecture" in config:
        return "timm"
    if "model_type" in config:
        return "hf"
    raise UserError(f"{directory} has neither open_clip_config.json nor a timm / transformers config.json: "
                    "not a directory ov2 import can read")


def load_pretrained(directory: str | Path) -> tuple[OpenVision2, Preprocess, dict]:
    """(encoder-only model in eval mode, preprocessing, notes incl. "source") from any supported directory."""
    source = detect_source(directory)
    if source == "open_clip":
        from .open_clip_format import read_open_clip_dir as read
    elif source == "timm":
        from .timm_format import read_timm_dir as read
    else:
        from .hf_format import read_hf_dir as read
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # said in the one line below
            spec, state, preprocess, notes = read(directory)
    except UserError:
        raise
    except Exception as err:  # inside timm / transformers: missing, truncated or refused weights, unknown names
        library = {"hf": "transformers"}.get(source, source)
        raise UserError(f"cannot load {directory} as a {library} model: {load_failure(err)}") from None
    model = OpenVision2(spec.model_config(), device="meta")
    model.encoder.load_state_dict(state, strict=True, assign=True)
    return model.eval(), preprocess, dict(source=source, **notes)


def load_open_clip(directory: str | Path) -> tuple[OpenVision2, Preprocess, dict]:
    """The released weights' format, named: like load_pretrained, but only for open_clip directories."""
    if detect_source(directory) != "open_clip":
        raise UserError(f"{directory} has no open_clip_config.json: pass an open_clip (hf-hub layout) directory")
    model, preprocess, notes = load_pretrained(directory)
    notes.pop("source")
    return model, preprocess, notes


def import_pretrained(directory: str | Path, out: str | Path) -> tuple[Path, dict]:
    """Write an encoder-only checkpoint directory; returns (its path, a summary)."""
    from ..checkpoint import save_checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # never replace a run or a checkpoint
        raise UserError(f"{out} already exists and is not empty: choose a new --out directory")
    model, preprocess, notes = load_pretrained(directory)
    extra = dict(imported_from=str(Path(directory).resolve()), imported_format=notes["source"],
                 preprocess=preprocess.to_dict(), **{k: v for k, v in notes.items() if k != "source"})
    path = save_checkpoint(out, model, None, extra=extra)
    summary = dict(checkpoint=str(path), encoder=model.config.encoder, image_size=model.config.image_size,
                   pre_norm=model.config.pre_norm, class_token=model.config.class_token,
                   parameters=sum(p.numel() for p in model.parameters()), **notes)
    return path, summary


import_open_clip = import_pretrained  # the released weights' case; the source is detected either way
