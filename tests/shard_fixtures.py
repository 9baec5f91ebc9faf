"""Small WebDataset shards for the shard tests: distinct little images with known captions."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from openvision2.data.writer import ShardWriter


def image_bytes(index: int, size: tuple[int, int] = (40, 32), fmt: str = "JPEG") -> bytes:
    """A small image whose colour encodes `index` (so images differ)."""
    rng = np.random.default_rng(index)
    pixels = np.full((size[1], size[0], 3), rng.integers(0, 256, 3), dtype=np.uint8)
    pixels[::4] = 255 - pixels[::4]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def write_shards(directory: Path, prefix: str, num_shards: int, per_shard: int, start: int = 0) -> list[str]:
    """`num_shards` shards of `per_shard` good samples, keys f"{prefix}{i:05d}", captions "caption i"."""
    with ShardWriter(directory, prefix=prefix, per_shard=per_shard) as writer:
        for i in range(start, start + num_shards * per_shard):
            writer.write(f"{prefix}{i:05d}", {"jpg": image_bytes(i), "txt": f"caption {i}",
                                              "json": {"index": i, "captions": [f"first {i}", f"second {i}"]}})
    return [str(directory / name) for name in sorted(writer.sizes)]
