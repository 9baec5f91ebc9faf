"""Existing WebDataset shards (img2dataset output, local or remote): every sample is read through the
shard reader, checked and written again, so damaged shards, images and captions are dropped and the
corpus can be re-sharded (another --per-shard or --shard-size). The json member is kept, with the
sample's original key as `source_key`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator


def rows(spec: str, caption_key: str, skipped: Counter) -> Iterator[dict]:
    """`skipped` receives the reader's own reasons (unreadable_shard, truncated_tar, ...)."""
    from ..shards import IMAGE_EXTS, ShardDataset, SlotStream

    dataset = ShardDataset(spec, transform=None, caption_key=caption_key, shuffle=False, epochs=1)
    stream = SlotStream(dataset, 0, 1, shuffle=False, epochs=1)
    reader = stream.streams[0]
    try:
        while (raw := reader.next_raw()) is not None:
            members, shard, key, _ = raw
            image = next((members[e] for e in IMAGE_EXTS if e in members), None)
            try:
                meta = json.loads(members["json"].decode("utf-8")) if "json" in members else {}
            except (UnicodeDecodeError, ValueError):
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
            caption = members.get(caption_key)
            if caption is not None:
                try:
                    caption = caption.decode("utf-8")
                except UnicodeDecodeError:
                    caption = None
            else:
                caption = meta.get(caption_key)
            meta["source_key"] = key
            yield {"image": image, "path": None, "captions": caption if isinstance(caption, list) else [caption],
                   "meta": meta, "where": f"{shard}:{key}"}
    finally:
        skipped.update(stream.bad.as_dict())
        stream.close()


def count(spec: str) -> int | None:
    """The sample count from the sizes.json beside local shards (None when unknown)."""
    import os

    from ..remote import is_remote
    from ..shards import _read_sizes, expand_shards

    total = 0
    for path in expand_shards(spec):
        if is_remote(path):
            return None
        sizes = _read_sizes(os.path.join(os.path.dirname(path), "sizes.json"))
        if os.path.basename(path) not in sizes:
            return None
        total += int(sizes[os.path.basename(path)])
    return total
