"""A deterministic, resumable stream of image-caption samples from WebDataset tar shards.

Layout: img2dataset's (key.jpg/png/webp + key.txt + key.json). A source is a shard list (brace
expansion and `::` as in webdataset/open_clip, or a directory of .tar files); several sources are mixed
with weights: `"a-{000..099}.tar@0.7;b-{000..009}.tar@0.3"`.

The training stream (data/loader.py) reads one global sample order (data/order.py) by offset through
this module's pieces: the shard list, the sample counts, the index cache and `ShardDataset.to_sample`.

This module's own streams serve single passes: the held-out sets (`ordered`, `first`, `take`), tokenizer
captions and `samples()`. A reader here is a "slot" (slot s of S): in epoch e the shard list is permuted
with a seed of (seed, source, e) and slot s takes every S-th shard of it (with fewer shards than slots,
every S-th sample); it walks its shards in groups of consecutive shards holding at least
`shuffle_buffer` samples and emits each group in a random permutation. Without shuffle and with
S = 1 (every held-out set) that is simply the shards' own order. Augmentation randomness is seeded by
the sample's identity.
"""

from __future__ import annotations

import json
import logging
import os
import random
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from glob import glob
from itertools import islice

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..errors import DataSourceFailed, UserError
from .badsamples import BadSample, BadSampleLog
from .remote import RemoteOptions, ShardCache, is_remote, sizes_beside
from .tarindex import MAX_INFLATED_BYTES, ShardIndex, ShardReader, UnreadableShard, index_shard
from .sentences import sub_caption
from .writer import SIZES_FILE

log = logging.getLogger("openvision2.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Longer captions are cut (and counted as long_caption) before anything tokenises them: a caption is
# at most a few hundred tokens, and a 10 MB one would cost seconds of tokenising per visit.
MAX_CAPTION_CHARS = 4096


# ---------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    shards: tuple[str, ...]
    weight: float = 1.0


def expand_shards(spec: str) -> list[str]:
    """`dir/` (its *.tar, sorted), or webdataset's notation: braces and `::`-joined lists."""
    from webdataset.shardlists import expand_urls

    spec = spec.strip()
    if not is_remote(spec) and os.path.isdir(spec):
        found = sorted(glob(os.path.join(spec, "*.tar")) + glob(os.path.join(spec, "*.tar.gz")))
        if not found:
            raise UserError(f"directory {spec} holds no .tar shards")
        return found
    try:
        paths = [path for path in expand_urls(spec) if path]
    except ValueError:  # braceexpand's UnbalancedBracesError
        raise UserError(f"shard pattern {spec!r} has unbalanced braces: write e.g. "
                        "data/train-{000000..000009}.tar") from None
    if paths and not any(is_remote(path) or os.path.exists(path) for path in paths):
        raise UserError(f"none of the {len(paths)} shards of {spec!r} exists (e.g. {paths[0]}): "
                        "check the path, or write shards with `ov2 shards`")
    return paths


def parse_sources(spec: str) -> list[Source]:
    """`"a-{0..9}.tar@2;b.tar@1"` -> two sources, weights 2 and 1 (default weight 1)."""
    sources = []
    for part in (p for p in spec.split(";") if p.strip()):
        path, sep, weight = part.rpartition("@")
        if not sep or "/" in weight:
            path, weight = part, "1"
        try:
            value = float(weight)
        except ValueError:
            raise UserError(f"shard source {part!r}: weight after @ must be a number") from None
        if value <= 0:
            raise UserError(f"shard source {part!r}: weight must be > 0")
        shards = expand_shards(path)
        if not shards:
            raise UserError(f"shard source {part!r} names no shard")
        sources.append(Source(tuple(shards), value))
    if not sources:
        raise UserError("no shards given: set e.g. train_shards=data/train-{000000..000009}.tar")
    return sources


@lru_cache(maxsize=64)
def _read_sizes(path: str) -> dict:
    """A sizes.json ({} when there is none, or it is not a regular file: a FIFO would block the open)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            sizes = json.load(f)
        return sizes if isinstance(sizes, dict) else {}
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------- captions
def json_meta(members: dict[str, bytes]) -> dict:
    """The json member as a dict ({} without one). Raises BadSample(bad_text) if it is not a JSON object."""
    if "json" not in members:
        return {}
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadSample("bad_text", f"json member: {err}") from None
    if not isinstance(meta, dict):
        raise BadSample("bad_text", "json member is not an object")
    return meta


def caption_of(members: dict[str, bytes], caption_key: str, rng: random.Random) -> str:
    """The caption from a `txt`-like member, or from a key of the json member; a list holds several
    captions and one is drawn per visit. Raises BadSample (missing/empty caption, bad text)."""
    if caption_key in members:
        raw = members[caption_key]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("bad_text", f"{caption_key} is not UTF-8") from None
    elif "json" in members:
        value = json_meta(members).get(caption_key)
        if value is None:
            raise BadSample("missing_caption", f"no {caption_key!r} in json")
        if isinstance(value, list):
            value = [v for v in value if isinstance(v, str) and v.strip()]
            if not value:
                raise BadSample("empty_caption", f"{caption_key!r} holds no caption")
            value = value[rng.randrange(len(value))]
        if not isinstance(value, str):
            raise BadSample("missing_caption", f"{caption_key!r} is not text")
        text = value
    else:
        raise BadSample("missing_caption", f"no {caption_key} member")
    text = text.strip()
    if not text:
        raise BadSample("empty_caption")
    return text


def capped(text: str, shard: str, key: str, bad: BadSampleLog) -> str:
    """The caption, cut to MAX_CAPTION_CHARS (counted as long_caption when it was longer)."""
    if len(text) <= MAX_CAPTION_CHARS:
        return text
    bad.record("long_caption", shard, key, f"{len(text)} characters, cut to {MAX_CAPTION_CHARS}")
    return text[:MAX_CAPTION_CHARS]


# ------------------------------------------------------------------------------------------ the stream
class IndexCache:
    """The last few shard indexes of a slot (a resumed or repeated group does not re-read headers).
    Remote shards (data/remote.py) are fetched into the slot's ShardCache and indexed there. Inflated
    gzip shards are big: the cache keeps at most `inflated_budget` bytes of them (the group being read
    holds its own references)."""

    def __init__(self, capacity: int = 16, remote: RemoteOptions | None = None, slot: int = 0,
                 inflated_budget: int | None = None, shared_dir: str | None = None):
        self.capacity, self._items = capacity, OrderedDict()  # an index costs ~0.5 kB a sample
        self.remote, self.slot, self.fetched = remote or RemoteOptions(), slot, None
        self.shared_dir = shared_dir  # a cache directory made by another process (data/loader.py), else our own
        self._held: tuple | None = None
        self.inflated_budget = MAX_INFLATED_BYTES if inflated_budget is None else inflated_budget

    def inflated_bytes(self) -> int:
        return sum(len(i.data) for i in self._items.values() if isinstance(i, ShardIndex) and i.data is not None)

    def get(self, path: str) -> ShardIndex | UnreadableShard:
        if path in self._items:
            self._items.move_to_end(path)
            item = self._items[path]
            if is_remote(path) and isinstance(item, ShardIndex):
                try:  # its local copy may have left the cache since: fetch it again (same name, same index)
                    self._shard_cache().get(path)
                except UnreadableShard as err:
                    return err
            return item
        try:
            if is_remote(path):
                item = index_shard(self._shard_cache().get(path))
                item.file, item.path = item.path, path  # read the local copy; name the shard by its URL
            else:
                item = index_shard(path)
        except UnreadableShard as err:
            item = err
        self._items[path] = item
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        for old in [p for p, i in self._items.items() if p != path and getattr(i, "data", None) is not None]:
            if self.inflated_bytes() <= self.inflated_budget:
                break
            del self._items[old]  # oldest inflated shards first
        return item

    def _shard_cache(self) -> ShardCache:
        if self.fetched is None:
            self.fetched = ShardCache(self.remote, self.slot, directory=self.shared_dir)
        return self.fetched

    def hold(self, order, window: tuple[int, int]) -> None:
        """Keep at least the indexes of two windows of `order` (data/order.py): the one read and the last."""
        if self._held != (id(order), window):
            self._held = (id(order), window)
            self.capacity = max(self.capacity, 2 * len(order.window_shards(*window)) + 2)

    def want(self, owner: int, current: list[str], upcoming: list[str]) -> None:
        """The remote shards `owner` reads now and next (the next ones are fetched in the background)."""
        if any(is_remote(u) for u in current + upcoming):
            self._shard_cache().want(owner, [u for u in current if is_remote(u)], [u for u in upcoming if is_remote(u)])

    def close(self) -> None:
        if self.fetched is not None:
            self.fetched.close()
            self.fetched = None


@dataclass
class Group:
    cursor: int  # position of its first shard in the slot's endless shard sequence
    length: int  # number of shards
    visits: list  # (sequence position, ShardIndex, sample indices kept by this slot)
    starts: list[int] = field(default_factory=list)  # cumulative sample counts, for bisect
    order: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.starts[-1] if self.starts else 0


class SourceStream:
    """One source as seen by one slot: a sequence of samples (as raw members), endless unless `epochs`."""

    def __init__(self, source: Source, source_id: int, slot: int, num_slots: int, seed: int, shuffle: bool,
                 shuffle_buffer: int, with_replacement: bool, epochs: int | None, bad: BadSampleLog,
                 cache: IndexCache):
        self.shards, self.source_id, self.slot, self.num_slots = source.shards, source_id, slot, num_slots
        self.seed, self.shuffle, self.buffer, self.with_replacement = seed, shuffle, shuffle_buffer, with_replacement
        self.bad, self.cache, self.reader = bad, cache, ShardReader()
        self.split_samples = len(self.shards) < num_slots and not with_replacement
        # shards per epoch for this slot
        self.per_epoch = (len(self.shards) if self.split_samples or with_replacement
                          else len(range(slot, len(self.shards), num_slots)))
        self.limit = None if epochs is None else epochs * self.per_epoch  # end of the sequence (a cursor)
        self.cursor, self.pos, self.group = 0, 0, None
        self._orders: dict[int, list[int]] = {}
        self._idle_shards = 0  # shards visited since the last good sample (to stop on a dead source)
        self._read_ahead = 1  # remote shards to fetch ahead: the last group's length

    def shard_at(self, j: int) -> str:
        """Shard number j of the slot's sequence: epochs of permuted shards, or independent draws."""
        if self.with_replacement:
            draw = random.Random(f"{self.seed}/{self.source_id}/{self.slot}/draw/{j}")
            return self.shards[draw.randrange(len(self.shards))]
        epoch, i = divmod(j, self.per_epoch)
        if epoch not in self._orders:
            order = list(range(len(self.shards)))
            if self.shuffle:  # the same permutation in every slot, so the slots' shares are disjoint
                random.Random(f"{self.seed}/{self.source_id}/epoch/{epoch}").shuffle(order)
            self._orders = {epoch: order if self.split_samples else order[self.slot::self.num_slots]}
        return self.shards[self._orders[epoch][i]]

    def _load_group(self, record: bool) -> Group:
        """The group starting at self.cursor: shards of one epoch, at least `buffer` samples if the epoch
        has them. `record` counts its shard-level problems; not on a resume into the middle of a group,
        whose problems were counted before the checkpoint."""
        group = Group(self.cursor, 0, [])
        epoch_end = (self.cursor // self.per_epoch + 1) * self.per_epoch
        self.cache.want(self.source_id, [], self._upcoming(self.cursor))  # frees the previous group's shards
        total = 0
        while self.cursor + group.length < epoch_end and (group.length == 0 or total < self.buffer):
            j = self.cursor + group.length
            path = self.shard_at(j)
            group.length += 1
            index = self.cache.get(path)
            if isinstance(index, UnreadableShard):
                if record:
                    self.bad.record("unreadable_shard", path, detail=str(index))
                continue
            if index.truncated and record:
                self.bad.record("truncated_tar", path, detail=index.truncated)
            elif not len(index) and record:
                self.bad.record("empty_shard", path, detail="a tar archive without members")
            keep = range(self.slot, len(index), self.num_slots) if self.split_samples else range(len(index))
            if len(keep):
                group.visits.append((j, index, keep))
                total += len(keep)
                group.starts.append(total)
        if self.shuffle and total > 1:
            rng = np.random.default_rng([self.seed, self.source_id, self.slot, self.cursor])
            group.order = rng.permutation(total)
        self._idle_shards += group.length
        self._read_ahead = group.length
        self.cache.want(self.source_id, [self.shard_at(j) for j in range(group.cursor, group.cursor + group.length)],
                        self._upcoming(group.cursor + group.length))
        return group

    def _upcoming(self, start: int) -> list[str]:
        """The shards fetched ahead (remote sources): the next group's, estimated by the last group's length."""
        count = self.cache.remote.read_ahead or self._read_ahead
        stop = start + count if self.limit is None else min(start + count, self.limit)
        return [self.shard_at(j) for j in range(start, stop)]

    def next_raw(self) -> tuple[dict[str, bytes], str, str, random.Random] | None:
        """The next sample's members, shard, key and an rng seeded by its identity; None at the end."""
        while True:
            if self.limit is not None and self.cursor >= self.limit:
                return None
            if self.group is None:
                self.group = self._load_group(record=self.pos == 0)
            if self.pos >= self.group.size:
                if self._idle_shards > self.per_epoch:
                    raise DataSourceFailed(f"shard source {self.source_id} ({self.shards[0]} ...) gave no usable sample "
                                    "in a whole pass over its shards; the log names the problems")
                self.cursor += self.group.length
                self.pos, self.group = 0, None
                self.reader.close()
                continue
            k = int(self.group.order[self.pos]) if self.group.order is not None else self.pos
            self.pos += 1
            v = bisect_right(self.group.starts, k)
            j, index, keep = self.group.visits[v]
            local = keep[k - (self.group.starts[v - 1] if v else 0)]
            try:
                members = {ext: self.reader.read(index, offset, size)
                           for ext, (offset, size) in index.members[local].items()}
            except BadSample as err:
                self.bad.record(err.reason, index.path, index.keys[local], err.detail)
                continue
            return members, index.path, index.keys[local], random.Random(f"{self.seed}/{self.source_id}/{j}/{local}")

    def note_good(self) -> None:
        self._idle_shards = 0

    def close(self) -> None:
        self.reader.close()


class SlotStream:
    """All sources of one slot, mixed by weight; yields decoded, augmented samples."""

    def __init__(self, dataset: "ShardDataset", slot: int, num_slots: int, shuffle: bool | None = None,
                 epochs: int | None = None):
        self.dataset, self.slot, self.num_slots = dataset, slot, num_slots
        self.bad = BadSampleLog()
        cache = self.index_cache = IndexCache(remote=dataset.remote, slot=slot)
        shuffle = dataset.shuffle if shuffle is None else shuffle
        epochs = dataset.epochs if epochs is None else epochs
        self.streams = [SourceStream(src, i, slot, num_slots, dataset.seed, shuffle, dataset.shuffle_buffer,
                                     dataset.with_replacement, epochs, self.bad, cache)
                        for i, src in enumerate(dataset.sources)]
        total = sum(s.weight for s in dataset.sources)
        self.cumulative = list(np.cumsum([s.weight / total for s in dataset.sources]))
        self.emitted = 0

    def _pick_source(self) -> SourceStream:
        if len(self.streams) == 1:
            return self.streams[0]
        u = random.Random(f"{self.dataset.seed}/mix/{self.slot}/{self.emitted}").random()
        return self.streams[min(bisect_right(self.cumulative, u), len(self.streams) - 1)]

    def next_sample(self) -> dict | None:
        """The next good sample (bad ones are counted and skipped); None at the end of a finite pass."""
        stream = self._pick_source()
        while True:
            raw = stream.next_raw()
            if raw is None:
                return None
            members, shard, key, rng = raw
            try:
                sample = self.dataset.to_sample(members, shard, key, rng, self.bad)
            except BadSample as err:
                self.bad.record(err.reason, shard, key, err.detail)
                continue
            stream.note_good()
            self.emitted += 1
            return sample

    def capped(self, text: str, shard: str, key: str) -> str:
        return capped(text, shard, key, self.bad)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.index_cache.close()


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset:
    """Shards and how to read them: sources, transform, caption keys, seed and shuffle settings, sample
    counts (`shard_counts`). The training stream over it is data/loader.py's ShardBatches (batch_size is
    its micro-batch, rank / world_size its place: explicit, or torch.distributed); `samples()`, `ordered()`
    and `first()` read single passes (a slot of this module)."""

    def __init__(self, sources: list[Source] | list[str] | str, transform: Callable, caption_key: str = "txt",
                 alt_caption_key: str = "", seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 10_000,
                 with_replacement: bool = False,
                 batch_size: int = 1, collate: Callable | None = None, rank: int | None = None,
                 world_size: int | None = None, epochs: int | None = None, drop_last: bool = True,
                 remote: RemoteOptions | None = None, with_meta: bool = False):
        if isinstance(sources, str):
            sources = parse_sources(sources)
        elif sources and all(isinstance(s, str) for s in sources):  # a list of shard paths: one source
            sources = [Source(tuple(sources))]
        self.sources = list(sources)
        if not self.sources:
            raise UserError("no shard source given")
        if epochs is not None and with_replacement:
            raise UserError("a finite pass (epochs) cannot sample with replacement")
        if epochs is not None and len(self.sources) > 1:
            raise UserError("a finite pass (epochs) reads a single shard source")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        # caption_key "" reads no caption; with_meta adds the parsed json member as sample["meta"]
        self.transform, self.caption_key, self.alt_caption_key = transform, caption_key, alt_caption_key
        self.with_meta = with_meta
        self.seed = seed
        self.shuffle, self.shuffle_buffer, self.with_replacement = shuffle, max(1, shuffle_buffer), with_replacement
        self.batch_size, self.collate, self.epochs, self.drop_last = batch_size, collate, epochs, drop_last
        self.rank, self.world_size = rank, world_size
        self.remote = remote or RemoteOptions()  # how remote shards are fetched (data/remote.py)

    def to_sample(self, members: dict[str, bytes], shard: str, key: str, rng: random.Random,
                  bad: BadSampleLog) -> dict:
        """A sample's members -> {image, caption, alt_text, key, shard[, meta]}; raises BadSample."""
        image_ext = next((e for e in IMAGE_EXTS if e in members), None)
        if image_ext is None:
            raise BadSample("missing_image", f"members: {', '.join(sorted(members)) or 'none'}")
        caption = alt_text = ""  # alt_text stays the caption for methods that name no alt-text field
        if self.caption_key:
            caption = alt_text = capped(caption_of(members, self.caption_key, rng), shard, key, bad)
        if self.alt_caption_key:
            try:
                alt_text = capped(caption_of(members, self.alt_caption_key, rng), shard, key, bad)
            except BadSample as err:  # never fall back to the caption: it would leak the target
                reason = "bad_text" if err.reason == "bad_text" else "missing_alt_text"
                raise BadSample(reason, f"alt-text {self.alt_caption_key!r}: {err}") from None
        meta = json_meta(members) if self.with_meta else None
        image = self.transform(members[image_ext], rng)
        sample = {"image": image, "caption": caption, "alt_text": alt_text, "key": key, "shard": shard,
                  "sub_caption": sub_caption(caption, rng)}  # after the image: its augmentation is as before
        if meta is not None:
            sample["meta"] = meta
        return sample

    def slot(self) -> tuple[int, int]:
        """(this reader's slot, number of slots) = (rank * workers + worker, world * workers)."""
        rank, world = rank_and_world(self.rank, self.world_size)
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    def open_slot(self, slot: int | None = None, num_slots: int | None = None) -> SlotStream:
        if slot is None:
            slot, num_slots = self.slot()
        return SlotStream(self, slot, num_slots)

    def samples(self, slot: int | None = None, num_slots: int | None = None) -> Iterator[dict]:
        stream = self.open_slot(slot, num_slots)
        try:
            while (sample := stream.next_sample()) is not None:
                yield sample
        finally:
            stream.close()

    def __len__(self) -> int:
        """Samples in one pass over every shard (bad ones included)."""
        return int(sum(int(counts.sum()) for counts in self.shard_counts()[0]))

    def shard_counts(self) -> tuple[list[np.ndarray], dict[str, str]]:
        """The samples of each shard, per source, from the sizes.json that `ov2 shards` writes beside the
        shards, else from the shard's headers (a remote shard without one is fetched for it); and the shards
        that could not be counted (path -> why: they hold no sample of the order). Computed once."""
        if not hasattr(self, "_counts"):
            cache = IndexCache(remote=self.remote)
            counts, problems = [], {}
            try:
                for source in self.sources:
                    found = np.zeros(len(source.shards), dtype=np.int64)
                    for k, path in enumerate(source.shards):
                        directory, name = os.path.split(path)
                        sizes = (sizes_beside(path, self.remote) if is_remote(path)
                                 else _read_sizes(os.path.join(directory, SIZES_FILE)))
                        if name in sizes:
                            found[k] = int(sizes[name])
                        elif isinstance(index := cache.get(path), ShardIndex):
                            found[k] = len(index)
                            cache.want(0, [], [])  # keep no fetched copy
                        else:
                            problems[path] = str(index)
                    counts.append(found)
            finally:
                cache.close()
            self._counts = counts, problems
        return self._counts

    def take(self, count: int) -> list[dict]:
        """The first `count` samples of a single-process pass (e.g. the fixed held-out batch)."""
        return self.first(count)[0]

    def first(self, count: int, accept: Callable[[dict], object] | None = None) -> tuple[list, dict[str, int]]:
        """The first `count` good samples of `ordered(accept)`, and the skipped ones by reason (logged)."""
        skipped: dict[str, int] = {}
        samples = self.ordered(accept, skipped)
        out = list(islice(samples, count))
        samples.close()
        if skipped:
            log.warning("held-out samples from %s: kept %d, skipped %s", self.sources[0].shards[0], len(out),
                        ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
        return out, skipped

    def ordered(self, accept: Callable[[dict], object] | None = None,
                skipped: dict[str, int] | None = None) -> Iterator:
        """The good samples of a single-process pass (in shard order unless the dataset shuffles).
        `accept(sample)` returns what to keep of a sample, or rejects it by raising BadSample; rejected
        and bad samples are counted by reason into `skipped` (when the iteration ends). Every held-out set (the training loop's, periodic and
        `ov2 eval` evaluations, `ov2 report`, `ov2 caption-accuracy`) is read this way."""
        stream = self.open_slot(0, 1)
        try:
            while (sample := stream.next_sample()) is not None:
                try:
                    item = sample if accept is None else accept(sample)
                except BadSample as err:
                    stream.bad.record(err.reason, sample["shard"], sample["key"], err.detail)
                    continue
                yield item
        finally:
            stream.close()
            if skipped is not None:
                skipped.update(stream.bad.as_dict())

    def captions(self, limit: int = 100_000) -> list[str]:
        """Captions of the first `limit` samples in shard order, without decoding an image (e.g. to
        train a tokenizer)."""
        stream = SlotStream(self, 0, 1, shuffle=False, epochs=1)
        out = []
        try:
            while len(out) < limit and (raw := stream.streams[0].next_raw()) is not None:
                try:
                    out.append(stream.capped(caption_of(raw[0], self.caption_key, raw[3]), raw[1], raw[2]))
                except BadSample:
                    continue
        finally:
            stream.close()
        return out
