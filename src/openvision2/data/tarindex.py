"""Index one WebDataset tar shard (img2dataset layout: key.jpg + key.txt + key.json) for random access.

Indexing reads only the 512-byte member headers (seeking over the data), so a shard's samples can
then be read in any order: that is what makes the shuffle deterministic and a resume exact without
replaying the stream. Members are grouped by key the way webdataset does it (the basename up to its
first dot, directory kept), whether or not a key's members are adjacent.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from .badsamples import BadSample


# A gzip shard is inflated into memory to be read at random (gzip cannot seek). A bomb (a small file
# that inflates to gigabytes) is refused before it costs that memory: a shard may inflate to at most
# MAX_INFLATED_BYTES, and to more than MIN_INFLATED_CAP only at a ratio a tar of images can reach.
MAX_INFLATED_BYTES = 1 << 30
MIN_INFLATED_CAP = 64 << 20
MAX_GZIP_RATIO = 64


class UnreadableShard(Exception):
    """The shard cannot be opened, is not a tar archive, or is a gzip bomb."""


@dataclass
class ShardIndex:
    path: str
    keys: list[str] = field(default_factory=list)
    # one dict per key: extension (lower case, e.g. "jpg", "txt", "json") -> (data offset, size)
    members: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    truncated: str = ""  # why the archive is cut short ("" if complete)
    data: bytearray | None = None  # the decompressed archive, for gzip shards (they cannot be seeked)
    file: str = ""  # where the bytes are, if not at `path` (a remote shard's local copy, data/remote.py)

    def __len__(self) -> int:
        return len(self.keys)


def split_key(name: str) -> tuple[str, str]:
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'); 'a.b.json' -> ('a', 'b.json')."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def inflated_cap(compressed_size: int) -> int:
    return min(MAX_INFLATED_BYTES, max(MIN_INFLATED_CAP, MAX_GZIP_RATIO * compressed_size))


def _gunzip(f, compressed_size: int) -> tuple[bytearray, str]:
    """Decompress a gzip stream, keeping what precedes damage or truncation; UnreadableShard as soon as
    the output passes inflated_cap (never holding more than the cap plus one chunk)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    cap, chunk = inflated_cap(compressed_size), 1 << 20
    out, problem = bytearray(), ""
    while not inflater.eof:
        data = inflater.unconsumed_tail or f.read(chunk)
        if not data:
            problem = "gzip stream ends early"
            break
        try:  # in bounded steps, so the part before a damaged block survives and a bomb stops early
            out += inflater.decompress(data, chunk)
        except zlib.error as err:
            problem = f"gzip error: {err}"
            break
        if len(out) > cap:
            raise UnreadableShard(f"gzip inflates to more than {cap} bytes from {compressed_size} "
                                  "(a decompression bomb?): unpack it, or split it into smaller shards")
    return out, problem  # not copied to bytes: that would double the peak memory


def index_shard(path: str) -> ShardIndex:
    """Read the member headers of `path`. Raises UnreadableShard; a truncated archive is indexed up to
    its last complete member and flagged in `truncated`."""
    try:
        with open_regular(path) as f:
            magic = f.read(2)
            f.seek(0, io.SEEK_END)
            size = f.tell()
            f.seek(0)
            if magic == b"\x1f\x8b":
                data, gzip_problem = _gunzip(f, size)
                return _index(path, _BufferFile(data), len(data), data, gzip_problem)
            return _index(path, f, size, None, "")
    except OSError as err:
        raise UnreadableShard(f"cannot open: {err.strerror or err}") from None


def open_regular(path: str):
    """open(path, "rb") for a regular file; UnreadableShard for anything else (a FIFO would block the open
    and every read forever, a device never ends, a directory is not a shard)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO's open returns at once instead of waiting
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableShard("not a regular file (a FIFO, a device or a directory)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class _BufferFile:
    """seek/read over a buffer without copying it (io.BytesIO copies a bytearray)."""

    def __init__(self, data: bytearray):
        self.view, self.position = memoryview(data), 0

    def seek(self, position: int) -> None:
        self.position = position

    def read(self, size: int) -> bytes:
        self.position += size
        return bytes(self.view[self.position - size:self.position])


def _octal(field: bytes) -> int | None:
    """A numeric header field; None if it is not octal (a damaged header with a valid checksum)."""
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    field = field.strip(b" \0")
    if not _is_octal(field):
        return None
    return int(field, 8) if field else 0


def _is_octal(field: bytes) -> bool:
    return not field.translate(None, b"01234567")  # (C speed: a generator over the bytes costs ~1 us)


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header ("<len> path=<name>\n" records)."""
    for record in data.split(b"\n"):
        _, _, pair = record.partition(b" ")
        if pair.startswith(b"path="):
            return pair[5:].decode("utf-8", "surrogateescape")
    return None


def _index(path: str, f, size: int, data: bytearray | None, problem: str) -> ShardIndex:
    """Walk the ustar/GNU/pax headers by hand: tarfile's parser costs ~30 us a member, this ~3 us."""
    index = ShardIndex(path, data=data)
    position: dict[str, int] = {}
    offset, long_name = 0, None
    while True:
        f.seek(offset)
        header = f.read(512)
        if not header and offset == 0:
            raise UnreadableShard("empty file")
        if len(header) < 512 or not any(header):  # the end: zero blocks, EOF, or a cut header
            if any(header):
                problem = problem or "partial header at the end"
            break
        stored = header[148:156].strip(b" \0")
        valid = bool(stored) and _is_octal(stored) and \
            int(stored, 8) == sum(header) - sum(header[148:156]) + 256
        if not valid:
            if offset == 0:
                raise UnreadableShard("not a tar archive (bad header checksum)")
            problem = problem or f"damaged header at byte {offset}"
            break
        kind, length = header[156:157], _octal(header[124:136])
        if length is None:  # cannot know where the next member starts: the rest of the archive is lost
            problem = problem or f"member size at byte {offset} is not a number"
            break
        start = offset + 512
        if start + length > size:
            name = long_name or header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            problem = problem or f"member {name} is cut short"
            key = split_key(name)[0]
            if key in position:  # the cut member's key is incomplete: drop it, it counts as truncated
                del index.keys[position[key]], index.members[position[key]]
            break
        offset = start + (length + 511) // 512 * 512
        if kind in (b"L", b"x"):  # the next member's long name (GNU), or its pax attributes
            f.seek(start)
            payload = f.read(length)
            long_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape") if kind == b"L" \
                else _pax_path(payload) or long_name
            continue
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global pax headers: not samples
            long_name = None
            continue
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345]:
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        long_name = None
        key, ext = split_key(name)
        if key not in position:
            position[key] = len(index.keys)
            index.keys.append(key)
            index.members.append({})
        index.members[position[key]][ext] = (start, length)
    index.truncated = problem
    return index


class ShardReader:
    """Reads member bytes of indexed shards; keeps the last `max_open` shards' files open (until close())."""

    def __init__(self, max_open: int = 256):
        self._files: OrderedDict[str, object] = OrderedDict()
        self.max_open = max_open

    def read(self, index: ShardIndex, offset: int, size: int) -> bytes:
        if index.data is not None:
            return bytes(memoryview(index.data)[offset:offset + size])
        f = self._files.get(index.path)
        if f is None:
            try:
                f = self._files[index.path] = open_regular(index.file or index.path)
            except (OSError, UnreadableShard) as err:  # removed or replaced since it was indexed
                raise BadSample("unreadable_shard", str(err)) from None
            if len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(index.path)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise BadSample("truncated_tar", "shard shrank since it was indexed")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
