"""Self-contained checkpoint directories: model.safetensors + config.json + the tokenizer.

Writes are atomic: a checkpoint is built in a temporary directory and renamed into place, and the
`latest` pointer is replaced atomically, so a crash mid-save leaves the previous one usable.
Loading never executes code (safetensors and JSON only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from .durable import fsync_tree, replace_dir, write_durably
from .errors import UserError
from .methods import build_model
from .models import ModelConfig, OpenVision2
from .tokenizer import CONFIG_FILE as TOKENIZER_CONFIG, CaptionTokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LATEST = "latest"


def save_checkpoint(directory: str | Path, model: OpenVision2, tokenizer: CaptionTokenizer | None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing one of the same name). tokenizer may be
    None only for an encoder-only model (ModelConfig.decoder == "none", e.g. `ov2 import`)."""
    directory = Path(directory)
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp / WEIGHTS)
    meta = {"model": model.config.to_dict(), **(extra or {})}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(tmp)
    fsync_tree(tmp)
    replace_dir(tmp, directory)
    return directory


def mark_latest(checkpoints_dir: Path, name: str) -> None:
    write_durably(checkpoints_dir / LATEST, name + "\n")


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run's checkpoints/ directory, or a run directory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: pass a checkpoint or run directory")
    for candidate in (path, path / "checkpoints"):
        if (candidate / WEIGHTS).is_file():
            return candidate
        if (candidate / LATEST).is_file():
            return candidate / (candidate / LATEST).read_text().strip()
    raise UserError(f"no checkpoint in {path}: expected {WEIGHTS} or a checkpoints/latest pointer")


class Checkpoint(NamedTuple):
    """A loaded checkpoint: `.model` (eval mode), `.tokenizer` (None for an encoder-only import) and
    `.config` (its config.json). Still unpacks as `model, tokenizer, meta = load_checkpoint(...)`."""

    model: torch.nn.Module
    tokenizer: CaptionTokenizer | None
    config: dict

    def caption(self, images, **options) -> list[str]:
        """Captions for PIL images or image tensors; options as generate.generate's (greedy by default)."""
        from .generate import caption

        return caption(self.model, self.tokenizer, images, **options)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Checkpoint(model in eval mode, tokenizer, the checkpoint's config.json) from a checkpoint
    directory, a run's checkpoints/ directory or a run directory."""
    directory = resolve_checkpoint(path)
    try:
        meta = json.loads((directory / CONFIG).read_text())
        state = load_file(directory / WEIGHTS, device=str(device))
    except Exception as err:  # OSError, JSONDecodeError, SafetensorError: all mean an unreadable checkpoint
        raise UserError(f"cannot read checkpoint {directory}: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise UserError(f"cannot read checkpoint {directory}: its {CONFIG} has no `model` section; "
                        f"it was not written by ov2 (or was edited): restore it from the run")
    # config.json's model section names its method (methods.py); one written before methods were
    # recorded has none, and is OpenVision 2's (a CapPa model's weights are OpenVision 2's too).
    try:
        model = build_model(ModelConfig.from_dict(meta["model"]), device="meta")
        model.load_state_dict(state, assign=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read checkpoint {directory}: its weights do not match the model its {CONFIG} "
                        f"describes ({first_line}); restore the checkpoint from the run") from None
    # An encoder-only checkpoint (decoder "none", from `ov2 import`) may come without a tokenizer.
    has_tokenizer = model.decoder is not None or (directory / TOKENIZER_CONFIG).is_file()
    return Checkpoint(model.to(device).eval(), CaptionTokenizer.load(directory) if has_tokenizer else None, meta)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The Hugging Face-style entry point: openvision2.from_pretrained("runs/a").caption([image])."""
    return load_checkpoint(path, device)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(encoder in eval mode, the checkpoint's config.json) from any checkpoint, full or encoder-only."""
    model, _, meta = load_checkpoint(path, device)
    return model.encoder, meta
