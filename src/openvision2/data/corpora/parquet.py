"""Parquet files holding the images themselves, as Hugging Face datasets write them: an image column
that is a struct {bytes, path} (the datasets Image feature) or plain binary, and a caption column
(a string, or a list of strings). Read in record batches, so memory stays bounded."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

from ...errors import UserError
from . import pick_column
from .folder import outside_skip

IMAGE_COLUMNS = ("image", "jpg", "png", "img", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "re_caption", "sentences")


def files(specs: list[str]) -> list[str]:
    """Files, directories (their *.parquet) and glob patterns."""
    found = []
    for spec in specs:
        if os.path.isdir(spec):
            found += sorted(glob.glob(os.path.join(spec, "**", "*.parquet"), recursive=True))
        else:
            matched = sorted(glob.glob(spec))
            if not matched:
                raise UserError(f"no parquet file at {spec}")
            found += matched
    if not found:
        raise UserError(f"no .parquet file in {', '.join(specs)}")
    return found


def _open(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading parquet needs pyarrow: pip install 'openvision2[parquet]'") from None
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError: truncated, empty, HTML ...
        raise UserError(f"{path} is not a parquet file ({_first_line(err)}): re-download it or leave it out") from None


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def count(paths: list[str]) -> int:
    return sum(_open(p).metadata.num_rows for p in paths)


def rows(paths: list[str], image_column: str | None, caption_column: str | None, root: str | None,
         allow_outside: bool = False) -> Iterator[dict]:
    """Other scalar and list columns go into the json member. An image struct without bytes but with a
    path is read from `root` (--images)."""
    for path in paths:
        table = _open(path)
        names = table.schema_arrow.names
        image_col = pick_column(names, image_column, IMAGE_COLUMNS, "image", path)
        caption_col = pick_column(names, caption_column, CAPTION_COLUMNS, "caption", path)
        try:
            yield from _records(table, path, image_col, caption_col, root, allow_outside)
        except (OSError, ValueError) as err:  # a damaged page shows only when it is read
            raise UserError(f"{path} is damaged ({_first_line(err)}): re-download it or leave it out") from None


def _records(table, path: str, image_col: str, caption_col: str, root: str | None,
             allow_outside: bool) -> Iterator[dict]:
    number = 0
    for batch in table.iter_batches(batch_size=256):
        for record in batch.to_pylist():
            number += 1
            image, caption = record.pop(image_col), record.get(caption_col)
            data, image_path = image, None
            if isinstance(image, dict):  # the datasets Image feature: {"bytes": ..., "path": ...}
                data, image_path = image.get("bytes"), image.get("path")
                if data is None and image_path and root:
                    refused = outside_skip(root, image_path, f"{os.path.basename(path)} row {number}",
                                           allow_outside)
                    if refused:
                        yield refused
                        continue
                    image_path = os.path.join(root, image_path)
                elif data is None:
                    image_path = None
            meta = {k: v for k, v in record.items() if not isinstance(v, (bytes, bytearray, dict))}
            yield {"image": data if isinstance(data, (bytes, bytearray)) else None, "path": image_path,
                   "captions": caption if isinstance(caption, list) else [caption], "meta": meta,
                   "where": f"{os.path.basename(path)} row {number}"}
