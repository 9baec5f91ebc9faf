"""An image folder plus a CSV (with a header) or JSONL file naming each image and its caption(s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def rows(records: list[dict], root: str, image_column: str, caption_column: str) -> Iterator[dict]:
    """Every other column goes into the json member, with the image's path as `source_path`; a list
    in the caption column keeps its first caption as txt (and the whole list in the json)."""
    for number, record in enumerate(records, 1):
        caption = record.get(caption_column)
        meta = {k: v for k, v in record.items() if k != image_column}
        meta["source_path"] = str(record.get(image_column))
        yield {"image": None, "path": str(Path(root) / str(record.get(image_column, ""))),
               "captions": caption if isinstance(caption, list) else [caption], "meta": meta,
               "where": f"row {number}"}
