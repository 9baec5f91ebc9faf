"""Write image-caption samples as WebDataset shards (img2dataset layout) with a `sizes.json` beside them.

The tar writing is webdataset's `ShardWriter`. What this adds is crash safety: each shard is written
under a hidden temporary name (`.prefix-000000.tar.partial`) and renamed once complete, so a reader
never sees half a shard; and `sizes.json`, which maps each shard's file name to its sample count (the
file open_clip's WebDataset loader reads to know a corpus' size, and what `ov2` prints as the sample
count), is written last, atomically, and only when every shard was written.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from ..errors import UserError

SIZES_FILE = "sizes.json"
PARTIAL = ".partial"


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def next_shard_number(out_dir: str | Path, prefix: str) -> int:
    """One past the highest `prefix-NNNNNN.tar` in out_dir (0 if none): where an append continues."""
    pattern = re.compile(re.escape(prefix) + r"-(\d{6,})\.tar")
    numbers = [int(m.group(1)) for p in Path(out_dir).iterdir() if (m := pattern.fullmatch(p.name))]
    return max(numbers, default=-1) + 1


def read_sizes(out_dir: str | Path) -> dict[str, int]:
    try:
        sizes = json.loads((Path(out_dir) / SIZES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return sizes if isinstance(sizes, dict) else {}


def write_sizes(out_dir: str | Path, sizes: dict[str, int]) -> None:
    """Add `sizes` to out_dir's sizes.json (several prefixes, or an append, share a directory), atomically."""
    merged = {**read_sizes(out_dir), **sizes}
    path = Path(out_dir) / SIZES_FILE
    tmp = path.with_name(f".{SIZES_FILE}{PARTIAL}")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def prepare_out_dir(out_dir: str | Path, append: bool = False) -> Path:
    """Create --out, refusing a file, an unwritable place, or (unless `append`) a non-empty directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a directory for the shards")
    if out.is_dir() and any(out.iterdir()) and not append:
        raise UserError(f"--out {out} is not empty: choose a new directory, or add --append to write "
                        "further shards after the ones there")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into --out {out}: permission denied")
    return out


def _encode(value) -> bytes:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class ShardWriter:
    """`write(key, {"jpg": bytes, "txt": str, "json": dict})` fills `prefix-000000.tar`, ... (numbered
    from `start`) with at most `per_shard` samples (and, with `max_bytes`, at most that many bytes
    unless a single sample is larger) each; leaving the `with` block normally writes
    sizes.json (unless `write_sizes` is false: the caller then calls `write_sizes(out, writer.sizes)`
    once everything succeeded). On an exception the shard in progress is deleted and sizes.json is
    left alone."""

    def __init__(self, out_dir: str | Path, prefix: str = "shard", per_shard: int = 10_000,
                 max_bytes: int | None = None, start: int = 0, write_sizes: bool = True):
        self.out_dir, self.prefix, self.per_shard, self.start = Path(out_dir), prefix, per_shard, start
        self.max_bytes, self._bytes, self.write_sizes = max_bytes, 0, write_sizes
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {self.out_dir}: {err.strerror or err}") from None
        self.sizes: dict[str, int] = {}
        self._writer = None  # webdataset's ShardWriter opens its first file at once: made on the first write
        self._mtime = time.time()

    def _publish(self, partial: str) -> None:
        """webdataset's per-shard hook: the temporary file is complete; give it its real name."""
        final = Path(partial).with_name(Path(partial).name[1:-len(PARTIAL)])
        if self._writer.count == 0:
            os.remove(partial)
            return
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, final)
        self.sizes[final.name] = self._writer.count

    def write(self, key: str, members: dict[str, bytes | str | dict | list]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        encoded = {ext: _encode(value) for ext, value in members.items()}
        size = sum(512 + (len(data) + 511) // 512 * 512 for data in encoded.values())  # as stored in the tar
        if self._writer is None:
            from webdataset import ShardWriter as WdsShardWriter

            pattern = str(self.out_dir / f".{self.prefix.replace('%', '%%')}-%06d.tar{PARTIAL}")
            self._writer = WdsShardWriter(pattern, maxcount=self.per_shard, post=self._publish,
                                          start_shard=self.start, verbose=0, encoder=False, mtime=self._mtime)
        elif self._writer.count >= self.per_shard or \
                (self.max_bytes and self._bytes and self._bytes + size > self.max_bytes):
            self._writer.next_stream()  # webdataset's own byte limit lets a shard pass it by a sample
            self._bytes = 0
        self._bytes += size
        self._writer.write({"__key__": key, **encoded})

    def close(self) -> dict[str, int]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.write_sizes and self.sizes:
            write_sizes(self.out_dir, self.sizes)
        return dict(self.sizes)

    def abort(self) -> None:
        """Delete the shard in progress (the complete ones stay, unlisted); write no sizes.json."""
        if self._writer is not None and self._writer.tarstream is not None:
            partial = self._writer.fname
            self._writer.post = None
            self._writer.tarstream.close()
            self._writer.tarstream = None
            Path(partial).unlink(missing_ok=True)
        self._writer = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
