"""Corpora in the formats people have, turned into WebDataset shards by `ov2 shards`.

Each input format is a small module whose `rows(...)` yields one dict per sample:
    {"image": bytes or None, "path": image file or None, "captions": [str, ...], "meta": {...}, "where": str}
(`where` names the row in a skip message). encode.write_corpus checks and stores them, in parallel.
"""

from __future__ import annotations


def pick_column(names: list[str], chosen: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    """The column holding `what` (image or caption): the user's choice, else the first known name."""
    from ...errors import UserError

    if chosen:
        if chosen not in names:
            raise UserError(f"{path} has no column {chosen!r} (columns: {', '.join(names)})")
        return chosen
    for name in candidates:
        if name in names:
            return name
    raise UserError(f"{path} has no {what} column: name one with --{what}-column (columns: {', '.join(names)})")
