"""`ov2 export`: one checkpoint -> one directory in another library's format."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..preprocess import Preprocess
from .model_card import model_card
from .spec import EncoderSpec

FORMATS = ("timm", "hf", "hf-clip", "hf-siglip", "open_clip", "decoder")


def preprocess_of(model, meta: dict) -> Preprocess:
    """The checkpoint's own preprocessing (an imported one keeps the release's), else this project's."""
    if "preprocess" in meta:
        return Preprocess.from_dict(meta["preprocess"])
    return Preprocess(size=model.config.image_size)


def write_export(model, tokenizer, meta: dict, fmt: str, out: str | Path, source: str | None = None) -> Path:
    """Write `fmt` into `out` (a new or empty directory) with its model card (README.md; `source` names
    the checkpoint); built in a sibling temp dir, then renamed, so a failed export leaves nothing
    half-written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new --out directory")
    spec = EncoderSpec.of(model.encoder, model.config.image_size)
    preprocess = preprocess_of(model, meta)
    state = model.encoder.state_dict()
    if fmt == "decoder" and (model.decoder is None or tokenizer is None):
        raise UserError("this checkpoint has no decoder (an encoder-only import): nothing to export as 'decoder'")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:  # a path under a file, a read-only file system, no permission
        raise UserError(f"cannot create --out {out}: {err.strerror or err}") from None
    try:
        if fmt == "timm":
            from .timm_format import save_timm_dir
            save_timm_dir(state, spec, preprocess, tmp)
        elif fmt == "open_clip":
            from .open_clip_format import save_open_clip_dir
            save_open_clip_dir(state, spec, preprocess, tmp)
        elif fmt == "decoder":
            from .decoder_format import save_decoder_dir
            save_decoder_dir(model, tokenizer, preprocess, tmp)
        else:
            from .hf_format import save_hf_dir
            save_hf_dir(state, spec, preprocess, tmp, fmt)
        (tmp / "README.md").write_text(model_card(fmt, spec, preprocess, meta, source, out.name))
    except OSError as err:  # e.g. the disk fills up
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the export into {out}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    from ..checkpoint import load_checkpoint, resolve_checkpoint

    if fmt not in FORMATS:  # before loading anything
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    model, tokenizer, meta = load_checkpoint(checkpoint)
    return write_export(model, tokenizer, meta, fmt, out, source=str(resolve_checkpoint(checkpoint)))
