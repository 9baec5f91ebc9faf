"""Write image-caption samples as WebDataset shards (img2dataset layout) with a `sizes.json` beside them.

`sizes.json` maps each shard's file name to its sample count: the file open_clip's WebDataset loader
reads to know a corpus' size, and what `ov2` prints as the sample count.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

SIZES_FILE = "sizes.json"


class ShardWriter:
    """`write(key, {"jpg": bytes, "txt": str, "json": dict})` fills `prefix-000000.tar`, ... with at
    most `per_shard` samples (and, with `max_bytes`, at most that many bytes unless a single sample is
    larger) each; `close()` writes sizes.json and returns {shard name: count}."""

    def __init__(self, out_dir: str | Path, prefix: str = "shard", per_shard: int = 10_000,
                 max_bytes: int | None = None):
        self.out_dir, self.prefix, self.per_shard = Path(out_dir), prefix, per_shard
        self.max_bytes, self._bytes = max_bytes, 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._mtime = time.time()

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.prefix}-{len(self.sizes):06d}.tar"
        self.sizes[name] = 0
        self._tar = tarfile.open(self.out_dir / name, "w", format=tarfile.USTAR_FORMAT)

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def write(self, key: str, members: dict[str, bytes | str | dict | list]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        encoded = {}
        for ext, value in members.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False)
            encoded[ext] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        size = sum(512 + (len(data) + 511) // 512 * 512 for data in encoded.values())  # as stored in the tar
        if self._tar is None or self.sizes[f"{self.prefix}-{len(self.sizes) - 1:06d}.tar"] >= self.per_shard or \
                (self.max_bytes and self._bytes and self._bytes + size > self.max_bytes):
            self._open_next()
            self._bytes = 0
        self._bytes += size
        for ext, data in encoded.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), self._mtime, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.sizes[f"{self.prefix}-{len(self.sizes) - 1:06d}.tar"] += 1

    def close(self) -> dict[str, int]:
        self._close_current()
        sizes_path = self.out_dir / SIZES_FILE
        sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
        sizes.update(self.sizes)  # several prefixes (train, test) may share a directory
        sizes_path.write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
        return dict(self.sizes)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
