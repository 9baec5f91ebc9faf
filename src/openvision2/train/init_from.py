"""`init_from=PATH`: start a run from released or earlier weights.

- A full checkpoint of this project (encoder + decoder + tokenizer, e.g. the previous curriculum
  stage): every weight and the tokenizer come from it, as before.
- An encoder-only checkpoint (`ov2 import` output) or a timm / transformers / open_clip export
  directory of an OpenVision encoder: the encoder comes from it, the decoder starts fresh, and the
  tokenizer comes from the run's config (WordPiece for the released models' recipe).
A resolution change needs no resampling (the sin-cos position table is computed for each grid); a
shape mismatch (another size or patch) is one line naming both shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from ..checkpoint import CONFIG, WEIGHTS, resolve_checkpoint
from ..errors import UserError
from ..tokenizer import CONFIG_FILE as TOKENIZER_CONFIG


def _own_checkpoint(path: Path) -> Path | None:
    """The checkpoint directory when `path` is one of this project's (config.json with a "model" entry)."""
    try:
        directory = resolve_checkpoint(path)
        return directory if "model" in json.loads((directory / CONFIG).read_text()) else None
    except (UserError, OSError, ValueError):
        return None


def tokenizer_source(path: str | Path) -> Path | None:
    """The directory to read the tokenizer from, or None when the run's config must build one."""
    try:
        directory = resolve_checkpoint(path)
    except UserError:
        return None
    return directory if (directory / TOKENIZER_CONFIG).is_file() else None


def _encoder_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(encoder state, its model config, what it is) from an encoder-only checkpoint or an export."""
    directory = _own_checkpoint(path)
    if directory is not None:
        meta = json.loads((directory / CONFIG).read_text())
        state = {k.removeprefix("encoder."): v for k, v in load_file(directory / WEIGHTS).items()
                 if k.startswith("encoder.")}
        kind = f"{meta['imported_format']} import" if "imported_format" in meta else "encoder-only checkpoint"
        return state, meta["model"], kind
    from ..interop.importer import load_pretrained

    model, _, notes = load_pretrained(path)  # refuses anything that is not exactly an OpenVision ViT
    return dict(model.encoder.state_dict()), model.config.to_dict(), f"{notes['source']} export"


def _check_shapes(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], where: Path, sizes: str) -> None:
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which this run's encoder has not"
        raise UserError(f"cannot initialise the encoder from {where}: it {what} ({sizes}; "
                        "pre_norm and class_token must match too)")
    for key, value in theirs.items():
        if value.shape != ours[key].shape:
            raise UserError(f"cannot initialise the encoder from {where}: {key} is {list(value.shape)} there and "
                            f"{list(ours[key].shape)} in this run ({sizes})")


def load_init_weights(path: str | Path, model: torch.nn.Module, encoder: torch.nn.Module, config) -> str:
    """Initialise `model` (possibly wrapped; `encoder` is its plain encoder) from `path`; returns a log line."""
    from .state import load_weights_from

    from ..interop.importer import detect_source

    path = Path(path)
    directory = _own_checkpoint(path)
    if directory is None and path.is_dir():
        try:
            detect_source(path)
        except UserError:  # not an export either: a checkpoint of this project with a damaged config
            return f"init_from {load_weights_from(path, model)}: loaded every weight"
    if directory is not None and (directory / TOKENIZER_CONFIG).is_file():
        meta = json.loads((directory / CONFIG).read_text())
        if meta["model"].get("decoder", "none") != "none":
            load_weights_from(directory, model)
            return f"init_from {directory}: loaded every weight (encoder, decoder) and its tokenizer"
    state, source_config, kind = _encoder_weights(path)
    ours = {k: v for k, v in encoder.state_dict().items()}
    sizes = (f"encoder {source_config.get('encoder')} @ {source_config.get('image_size')} px there, "
             f"{config.encoder} @ {config.image_size} px here")
    _check_shapes(state, ours, path, sizes)
    set_model_state_dict(model, {f"encoder.{k}": v for k, v in state.items()},
                         options=StateDictOptions(full_state_dict=True, strict=False))
    line = (f"init_from {path} ({kind}): loaded the encoder ({len(state)} tensors); the decoder starts fresh; "
            f"tokenizer from this run's config ({config.tokenizer})")
    if source_config.get("image_size") != config.image_size:
        line += (f"; resolution {source_config.get('image_size')} -> {config.image_size} px: the sin-cos position "
                 "table is computed for the new grid (nothing resampled)")
    return line
