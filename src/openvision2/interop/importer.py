"""`ov2 import`: released OpenVision (2) vision-only weights (open_clip layout) -> this project.

The result is an encoder-only OpenVision2 (ModelConfig.decoder == "none"): it encodes images like
any other checkpoint (`checkpoint.load_checkpoint` / `load_encoder`), exports to every format, and
refuses to caption. Its config.json keeps the release's preprocessing and where it came from.
"""

from __future__ import annotations

from pathlib import Path

from ..models.openvision2 import OpenVision2
from .open_clip_format import read_open_clip_dir
from .preprocessing import Preprocess


def load_open_clip(directory: str | Path) -> tuple[OpenVision2, Preprocess, dict]:
    """(encoder-only model in eval mode, preprocessing, notes) from an open_clip directory, in memory."""
    spec, state, preprocess, notes = read_open_clip_dir(directory)
    model = OpenVision2(spec.model_config(), device="meta")
    model.encoder.load_state_dict(state, strict=True, assign=True)
    return model.eval(), preprocess, notes


def import_open_clip(directory: str | Path, out: str | Path) -> tuple[Path, dict]:
    """Write an encoder-only checkpoint directory; returns (its path, a summary)."""
    from ..checkpoint import save_checkpoint

    model, preprocess, notes = load_open_clip(directory)
    extra = dict(imported_from=str(Path(directory).resolve()), imported_format="open_clip",
                 preprocess=preprocess.to_dict(), **notes)
    path = save_checkpoint(out, model, None, extra=extra)
    summary = dict(checkpoint=str(path), encoder=model.config.encoder, image_size=model.config.image_size,
                   pre_norm=model.config.pre_norm, parameters=sum(p.numel() for p in model.parameters()), **notes)
    return path, summary
