"""The global sample order of a shard corpus: which sample sits at global position p, as a pure function
of (seed, p) and the corpus' per-shard sample counts; nothing depends on ranks, workers or micro-batches.

Sources. With several weighted sources, positions are dealt in blocks of MIX_BLOCK: each block holds
every source a fixed quota of times (the weights, rounded to 1/MIX_BLOCK), in a permutation drawn from
(seed, block). So position p names a source s and the index i of the sample in s's own sequence.

One source's sequence is endless: epoch e = i // N (N = the source's samples), offset j = i % N.
Epoch e lists the shards in a permutation drawn from (seed, source, e) (with replacement: N draws of a
shard at random instead), cuts that list into windows of consecutive whole shards holding at least
`buffer` samples, and emits each window's samples in a permutation drawn from (seed, source, e, window):
a shuffle buffer of `buffer` samples, computed instead of filled, as strong as a streaming shuffle
buffer of that size and one that any reader can index. Without `shuffle` the order is the shards' own.

Cost. Per source an array of shard counts and, for the current epoch, its shard permutation and cumulative
counts (a few bytes a shard: ~2.4 MB for 100,000 shards); per window in use, one permutation of its samples
(4 bytes a sample). Locating a sample is a few binary searches.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

MIX_BLOCK = 4096  # positions per mixing block: weights are kept to 1/4096
_MASK = (1 << 64) - 1  # numpy seeds are non-negative


@dataclass(frozen=True)
class Located:
    source: int
    index: int  # the sample's index in its source's endless sequence (unique per visit)
    shard: int  # the shard's number in its source
    local: int  # the sample's number in its shard
    window: tuple[int, int]  # (epoch, window) of the source: the unit of read-ahead and caching


class SourceOrder:
    """The endless sequence of one source: index i -> (shard, sample in shard)."""

    def __init__(self, counts, seed: int, source: int, shuffle: bool = True, buffer: int = 1,
                 with_replacement: bool = False):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        self.seed, self.source, self.shuffle = seed & _MASK, source, shuffle
        self.buffer, self.with_replacement = max(1, buffer), with_replacement
        self._epoch_starts = [0]  # first index of each epoch (epochs differ in length with replacement)
        # the last two epochs' layouts and windows' permutations (a batch may straddle a boundary)
        self._layouts: dict[int, tuple] = {}  # epoch -> (epoch, shard ids, cumulative counts, window starts, ...)
        self._perms: dict[tuple[int, int], np.ndarray] = {}  # (epoch, window) -> permutation of its samples

    def epoch_of(self, i: int) -> tuple[int, int]:
        """(epoch, offset in the epoch) of sequence index i."""
        if self.total == 0:
            raise ValueError("a source without samples has no order")
        if not self.with_replacement:
            return divmod(i, self.total)
        while self._epoch_starts[-1] <= i:  # epochs of random draws: their lengths are summed once
            self._epoch_starts.append(self._epoch_starts[-1] + int(self.layout(len(self._epoch_starts) - 1)[2][-1]))
        epoch = bisect_right(self._epoch_starts, i) - 1
        return epoch, i - self._epoch_starts[epoch]

    def layout(self, epoch: int) -> tuple:
        """(epoch, shard ids in reading order, cumulative sample counts [len+1], first shard slot of each
        window, first sample of each window)."""
        if epoch in self._layouts:
            return self._layouts[epoch]
        n = len(self.counts)
        if not self.shuffle:
            ids = np.arange(n)
        else:
            rng = np.random.default_rng([self.seed, 2, self.source, epoch])
            ids = rng.integers(n, size=n) if self.with_replacement else rng.permutation(n)
        ids = ids.astype(np.int32 if n < 2**31 else np.int64)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.counts[ids], out=starts[1:])
        if self.shuffle:  # greedy: a window closes once it holds `buffer` samples (a plain loop: ~10 ms/100k)
            windows, held = [0], 0
            for k, count in enumerate(self.counts[ids].tolist()):
                held += count
                if held >= self.buffer and k + 1 < n:
                    windows.append(k + 1)
                    held = 0
            window_starts = np.asarray(windows, dtype=np.int64)
        else:
            window_starts = np.zeros(1, dtype=np.int64)
        layout = (epoch, ids, starts, window_starts, starts[window_starts])
        _remember(self._layouts, epoch, layout)
        return layout

    def window_span(self, epoch: int, window: int) -> tuple[int, int]:
        """(first, last + 1) shard slots of the epoch's reading order that the window holds."""
        _, ids, _, window_starts, _ = self.layout(epoch)
        stop = int(window_starts[window + 1]) if window + 1 < len(window_starts) else len(ids)
        return int(window_starts[window]), stop

    def window_shards(self, epoch: int, window: int) -> list[int]:
        first, stop = self.window_span(epoch, window)
        return self.layout(epoch)[1][first:stop].tolist()

    def windows_per_epoch(self, epoch: int) -> int:
        return len(self.layout(epoch)[3])

    def locate(self, i: int) -> tuple[int, int, tuple[int, int]]:
        """Sequence index i -> (shard, sample in shard, (epoch, window))."""
        epoch, j = self.epoch_of(i)
        _, ids, starts, _, window_samples = self.layout(epoch)
        window = 0
        if self.shuffle:
            window = int(np.searchsorted(window_samples, j, side="right")) - 1
            first, stop = self.window_span(epoch, window)
            base = int(starts[first])
            j = base + int(self._permutation(epoch, window, int(starts[stop]) - base)[j - base])
        slot = int(np.searchsorted(starts, j, side="right")) - 1
        return int(ids[slot]), j - int(starts[slot]), (epoch, window)

    def _permutation(self, epoch: int, window: int, size: int) -> np.ndarray:
        if (epoch, window) not in self._perms:
            rng = np.random.default_rng([self.seed, 1, self.source, epoch, window])
            _remember(self._perms, (epoch, window), rng.permutation(size).astype(np.int32 if size < 2**31 else np.int64))
        return self._perms[epoch, window]

    def memory_bytes(self) -> int:
        """Bytes held by the counts, the current epoch's layout and window permutation."""
        return (self.counts.nbytes + sum(a.nbytes for layout in self._layouts.values() for a in layout[1:])
                + sum(p.nbytes for p in self._perms.values()))


def _remember(cache: dict, key, value, keep: int = 2) -> None:
    cache[key] = value
    while len(cache) > keep:
        del cache[next(iter(cache))]


class GlobalOrder:
    """Global position p -> Located, for weighted sources (each a SourceOrder)."""

    def __init__(self, sources: list[SourceOrder], weights: list[float], seed: int):
        if len(sources) != len(weights) or not sources:
            raise ValueError("one weight per source")
        self.sources, self.seed = sources, seed & _MASK
        total = float(sum(weights))
        exact = [w / total * MIX_BLOCK for w in weights]
        quota = [max(1, int(e)) for e in exact]
        for k in sorted(range(len(quota)), key=lambda k: int(exact[k]) - exact[k]):  # largest remainders
            if sum(quota) >= MIX_BLOCK:
                break
            quota[k] += 1
        self.quota = np.asarray(quota, dtype=np.int64)
        self.block = int(self.quota.sum())
        self._block: tuple | None = None  # (block number, source of each offset, index of it in the block)

    def _pattern(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        if self._block is None or self._block[0] != q:
            pattern = np.repeat(np.arange(len(self.quota)), self.quota)
            np.random.default_rng([self.seed, 3, q]).shuffle(pattern)
            within = np.empty(len(pattern), dtype=np.int64)
            for s in range(len(self.quota)):
                where = pattern == s
                within[where] = np.arange(int(where.sum()))
            self._block = (q, pattern, within)
        return self._block[1], self._block[2]

    def source_index(self, p: int) -> tuple[int, int]:
        """Global position -> (source, index in the source's sequence)."""
        if len(self.sources) == 1:
            return 0, p
        q, offset = divmod(p, self.block)
        pattern, within = self._pattern(q)
        s = int(pattern[offset])
        return s, q * int(self.quota[s]) + int(within[offset])

    def locate(self, p: int) -> Located:
        s, i = self.source_index(p)
        shard, local, window = self.sources[s].locate(i)
        return Located(s, i, shard, local, window)

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes() for s in self.sources) + (
            self._block[1].nbytes + self._block[2].nbytes if self._block is not None else 0)
