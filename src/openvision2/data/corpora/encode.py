"""Rows of any corpus -> checked images -> WebDataset shards (img2dataset layout, sizes.json), with
the image checks spread over worker processes and a progress bar.

A row's image is stored as it is when it is a JPEG, PNG or WebP, else converted to PNG; its first
caption becomes the txt member and `meta` the json member. Rows without a readable image or a
caption are skipped, counted by reason and logged once per reason.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator

from ...logs import count_skipped

log = logging.getLogger("openvision2.data")

COPIED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # stored as they are; others become PNG


def encode_row(row: dict) -> tuple:
    """("ok", ext, image bytes, caption, meta) or ("skip", reason, detail). Runs in a worker process."""
    import warnings

    from PIL import Image

    if "skip" in row:  # refused by the row reader (data/corpora/folder.py)
        return ("skip", *row["skip"])
    captions = [c.strip() for c in row.get("captions") or [] if isinstance(c, str) and c.strip()]
    if not captions:
        return "skip", "empty_caption", f"{row['where']}: no caption"
    data = row.get("image")
    try:
        if data is None:
            if not row.get("path"):
                return "skip", "unreadable_image", f"{row['where']}: no image"
            with open(row["path"], "rb") as f:
                data = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # a full decode: verify() passes truncated JPEG, BMP, GIF and TIFF files
                fmt = image.format
        ext = COPIED_FORMATS.get(fmt)
        if ext is None:
            buffer = io.BytesIO()
            with Image.open(io.BytesIO(data)) as image:
                image.convert("RGB").save(buffer, "PNG")
            data, ext = buffer.getvalue(), "png"
    except OSError as err:
        return "skip", "unreadable_image", f"{row['where']}: {row.get('path') or 'image'}: {err}"
    except Exception as err:  # PIL raises several types for damaged files
        return "skip", "unreadable_image", f"{row['where']}: {type(err).__name__}: {err}"
    return "ok", ext, data, captions[0], row.get("meta") or {}


def _encoded(rows: Iterable[dict], workers: int) -> Iterator[tuple]:
    if workers <= 1:
        yield from map(encode_row, rows)
        return
    # forkserver: workers do not inherit the parent's threads (torch's, the progress bar's); the server
    # imports this module once and every worker is forked from it
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(workers) as pool:
        yield from pool.imap(encode_row, rows, chunksize=8)  # in order: keys follow the input


def write_corpus(rows: Iterable[dict], out: str, prefix: str = "shard", per_shard: int = 10_000,
                 max_bytes: int | None = None, workers: int = 1, total: int | None = None,
                 limit: int | None = None, extra_skipped: Counter | None = None, append: bool = False) -> dict:
    """Write the rows' samples; returns {"out", "samples", "shards": {name: count}, "skipped": {reason: n}}.
    `extra_skipped` is a Counter the row reader adds its own skips to (e.g. bad input shards)."""
    from tqdm import tqdm

    from ..writer import ShardWriter, next_shard_number, read_sizes

    skipped = extra_skipped if extra_skipped is not None else Counter()
    written, start, first_key = 0, 0, 0
    if append:  # shard numbers and keys continue after those already in `out`
        start = next_shard_number(out, prefix)
        first_key = sum(n for name, n in read_sizes(out).items() if name.startswith(f"{prefix}-"))
    if limit:
        rows = (row for i, row in zip(range(limit), rows))
        total = min(total, limit) if total else limit
    with ShardWriter(out, prefix=prefix, per_shard=per_shard, max_bytes=max_bytes, start=start) as writer, \
            tqdm(total=total, unit="img", desc=f"ov2 shards {prefix}", disable=None, leave=False) as bar:
        for result in _encoded(rows, workers):
            bar.update()
            if result[0] == "skip":
                _, reason, detail = result
                count_skipped(log, skipped, reason, detail)
                continue
            _, ext, data, caption, meta = result
            writer.write(f"{first_key + written:09d}", {ext: data, "txt": caption, "json": meta})
            written += 1
    return {"out": str(out), "samples": written, "shards": dict(writer.sizes), "skipped": dict(skipped)}


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
