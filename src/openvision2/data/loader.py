"""The training stream from shards: this rank's micro-batches of one global sample order, exactly
resumable on any number of ranks and workers.

The order (data/order.py) puts a sample at every global position p = 0, 1, 2, ... as a function of the
seed and the shards' sample counts alone. Global batch b is positions [b*B, (b+1)*B); rank r takes the
r-th contiguous slice of it and cuts it into micro-batches, as data/resumable.py does for the embedded
set. DataLoader workers receive whole micro-batches (lists of positions) and read them by offset from
the tar indexes; the DataLoader hands them back in order. So the data state is the number of global
batches consumed (plus the run's bad-sample counters), the same on every rank, and a resume on any world
size or worker count continues with exactly the next unseen samples.

A bad sample keeps its place: the position is counted under its reason (by the rank whose slice holds
it, so once in the whole run) and filled with the next good sample of the order (p+1, p+2, ...), which is
thereby read twice in the epoch, with its own augmentation. Batches keep their size and the order stays a
pure function of the data, for good data and bad alike. When a source has failed for good (a long run of
positions without a usable sample), DataSourceFailed is raised.

Remote shards are fetched whole into one cache directory per rank, shared by its workers: the main
process knows the positions it hands to the workers, so it fetches the shards of the windows they touch
and of the next window in the background, and deletes every other shard. The cache therefore holds the
windows in flight plus one (two to three `shuffle_buffer` samples per rank), whatever the worker count.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections import Counter, deque
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataSourceFailed, UserError
from ..host_group import host_group
from .badsamples import REASONS, BadSample, BadSampleLog
from .order import GlobalOrder, SourceOrder
from .remote import ShardCache, is_remote
from .resumable import micro_batch_size
from .shards import IndexCache, ShardDataset, rank_and_world
from .tarindex import ShardReader, UnreadableShard
from .workers import init_worker, iterate

log = logging.getLogger("openvision2.data")

STATE_VERSION = 2
# A source counts as failed for good when this many positions in a row held no usable sample (at least
# one epoch's worth of a small source): a dead server, not a few broken shards.
DEAD_RUN = 50_000


def build_order(dataset: ShardDataset) -> GlobalOrder:
    counts, _ = dataset.shard_counts()
    for source, found in zip(dataset.sources, counts):
        if not found.sum():
            # at the start, so a wrong source rather than one that failed (exit 2, not DataSourceFailed)
            raise UserError(f"shard source {source.shards[0]} ... gave no usable sample: every shard is empty or "
                            "unreadable (the log names them); check train_shards")
    orders = [SourceOrder(found, dataset.seed, k, dataset.shuffle, dataset.shuffle_buffer, dataset.with_replacement)
              for k, found in enumerate(counts)]
    return GlobalOrder(orders, [s.weight for s in dataset.sources], dataset.seed)


class OrderReader:
    """Reads the sample at a global position (in whichever process it runs): locate, index, decode."""

    def __init__(self, dataset: ShardDataset, order: GlobalOrder, cache_dir: str | None = None):
        self.dataset, self.order = dataset, order
        self.indexes = IndexCache(remote=dataset.remote, shared_dir=cache_dir)
        self.reader = ShardReader()
        self.logged: set = set()  # the bad samples' (shard, reason) already logged by this process
        self.dead_run = min(DEAD_RUN, max(s.total for s in order.sources) * 2)

    def read(self, p: int, bad: BadSampleLog, place: int | None = None) -> dict:
        """The sample at position p, augmented as the sample of position `place` (default p); raises
        BadSample (with .shard and .key set)."""
        at = self.order.locate(p)
        path = self.dataset.sources[at.source].shards[at.shard]
        self.indexes.hold(self.order.sources[at.source], at.window)
        index = self.indexes.get(path)
        key = ""
        try:
            if isinstance(index, UnreadableShard):
                raise BadSample("unreadable_shard", str(index))
            if at.local >= len(index):
                raise BadSample("truncated_tar", f"sizes.json counts more samples than the tar's {len(index)}")
            key = index.keys[at.local]
            members = {ext: self.reader.read(index, offset, size)
                       for ext, (offset, size) in index.members[at.local].items()}
            # augmentation seeded by the place it fills: a substitute looks different from its own visit
            rng = random.Random(f"{self.dataset.seed}/{p if place is None else place}")
            return self.dataset.to_sample(members, path, key, rng, bad)
        except BadSample as err:
            err.shard, err.key = path, key
            raise

    def sample(self, p: int, bad: BadSampleLog) -> dict:
        """The sample for position p: its own, or (bad: counted) the next good one of the order."""
        try:
            return self.read(p, bad)
        except BadSample as err:
            bad.record(err.reason, err.shard, err.key, err.detail)
        unseen = BadSampleLog(logged=self.logged)  # the substitutes' own positions are counted by their readers
        for q in range(p + 1, p + 1 + self.dead_run):
            try:
                return self.read(q, unseen, place=p)
            except BadSample:
                continue
        raise DataSourceFailed(f"shard source {self.dataset.sources[0].shards[0]} ... gave no usable sample in "
                               f"{self.dead_run} positions of the order in a row: the data source has failed; "
                               "the log names the problems")

    def close(self) -> None:
        self.reader.close()
        self.indexes.close()


def _positions(batch: int, skip_micro: int, rank: int, size: int, micro_batches: int, global_batch: int,
               ahead: weakref.WeakMethod | None) -> Iterator[tuple[int, ...]]:
    while True:
        offset = batch * global_batch + rank * size * micro_batches
        for micro in range(skip_micro, micro_batches):
            begin = offset + micro * size
            micro_positions = tuple(range(begin, begin + size))
            if ahead is not None and (fetch_ahead := ahead()) is not None:
                fetch_ahead(micro_positions)
                del fetch_ahead  # not held across the yield
            yield micro_positions
        skip_micro, batch = 0, batch + 1


def _as_is(batch):
    return batch


class MicroBatches(Dataset):
    """Map-style view for the DataLoader: a tuple of positions -> the collated micro-batch, with the
    sample keys ("shard:key") and the bad samples its positions held ({reason: count})."""

    def __init__(self, dataset: ShardDataset, order: GlobalOrder, cache_dir: str | None):
        self.dataset, self.order, self.cache_dir = dataset, order, cache_dir
        self._reader: OrderReader | None = None  # one per process, made where it is used

    def __getitem__(self, positions) -> dict:
        if self._reader is None:
            self._reader = OrderReader(self.dataset, self.order, self.cache_dir)
        bad = BadSampleLog(logged=self._reader.logged)
        samples = [self._reader.sample(p, bad) for p in positions]
        collate = self.dataset.collate
        out = collate(samples) if collate is not None else {
            "images": torch.stack([s["image"] for s in samples]), "texts": [s["caption"] for s in samples]}
        out["keys"] = [f"{s['shard']}:{s['key']}" for s in samples]  # which samples (OV2_TRACE_SAMPLES)
        out["bad"] = bad.as_dict()
        return out

    def __len__(self) -> int:  # positions are endless; the DataLoader never asks
        raise TypeError("the stream is endless")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class ShardBatches:
    """This rank's micro-batches, endlessly, with state_dict / load_state_dict and bad_samples()
    (counters by reason, for the metrics). `dataset.batch_size` is the micro-batch size; the global batch
    is micro-batch x micro_batches x world size."""

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, prefetch_factor: int = 2, micro_batches: int = 1):
        self._iterator, self._views, self._cache = None, None, None  # (close() works whatever __init__ reached)
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self.rank, self.world_size = rank_and_world(dataset.rank, dataset.world_size)
        self.micro_batches, self.micro_size = micro_batches, dataset.batch_size
        self.global_batch = self.micro_size * micro_batches * self.world_size
        micro_batch_size(self.global_batch, self.world_size, micro_batches)
        self.order = build_order(dataset)
        self.position, self.delivered = 0, 0  # global batches consumed; micro-batches of the current one
        self.base: Counter[str] = Counter()  # the run's counters at the resumed checkpoint
        self.local: Counter[str] = Counter()  # this rank's, since
        problems = dataset.shard_counts()[1]
        if problems and self.rank == 0:  # shards without a count: not in the order, counted once per run
            self.local["unreadable_shard"] += len(problems)
            for path, why in problems.items():
                log.warning("skipped %s (unreadable_shard): %s", path, why)
        self._in_flight: deque = deque()  # windows of the micro-batches handed to the workers, not consumed

    # ---------------------------------------------------------------------------------------- stream
    def positions(self, start: int, skip_micro: int) -> Iterator[tuple[int, ...]]:
        """This rank's micro-batches as position tuples, from global batch `start` on."""
        # the generator holds no reference to self: the DataLoader keeps it, and a cycle would keep the
        # stream (and its cache directory) alive after the last reference to it is gone
        ahead = weakref.WeakMethod(self._fetch_ahead) if self._cache is not None else None
        return _positions(start, skip_micro, self.rank, self.micro_size, self.micro_batches, self.global_batch, ahead)

    def _start(self) -> None:
        if any(is_remote(path) for source in self.dataset.sources for path in source.shards[:1]):
            self._cache = ShardCache(self.dataset.remote, slot=self.rank)  # this rank's, shared by its workers
        self._views = MicroBatches(self.dataset, self.order, self._cache.dir if self._cache else None)
        loader = DataLoader(self._views, sampler=self.positions(self.position, self.delivered), batch_size=None,
                            collate_fn=_as_is, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor if self.num_workers else None,
                            persistent_workers=False, worker_init_fn=init_worker)
        self._iterator = iterate(loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._start()
        batch = next(self._iterator)
        self.local.update(batch.pop("bad"))
        self.delivered += 1
        if self.delivered == self.micro_batches:
            self.position, self.delivered = self.position + 1, 0
        if self._in_flight:
            self._in_flight.popleft()
        return batch

    def _fetch_ahead(self, positions: tuple[int, ...]) -> None:
        """Remote shards: keep the windows of the micro-batches in flight (and this one), fetch the next
        window of each source in the background, delete the rest."""
        windows = {}
        for p in (positions[0], positions[-1]) if len(self.order.sources) == 1 else positions:
            at = self.order.locate(p)
            windows[at.source, at.window] = None
        self._in_flight.append(list(windows))
        held = {w for micro in self._in_flight for w in micro}
        ahead = set()
        for source, (epoch, window) in held:
            order = self.order.sources[source]
            ahead.add((source, (epoch, window + 1) if window + 1 < order.windows_per_epoch(epoch) else (epoch + 1, 0)))
        shards = self.dataset.sources

        def urls(windows) -> list[str]:
            return [shards[s].shards[k] for s, (e, w) in sorted(windows)
                    for k in self.order.sources[s].window_shards(e, w)]

        current = urls(held)
        upcoming = [u for u in urls(ahead - held) if u not in set(current)]
        read_ahead = self.dataset.remote.read_ahead  # 0: the whole next window
        self._cache.want("order", current, upcoming[:read_ahead] if read_ahead else upcoming)

    # ----------------------------------------------------------------------------------------- state
    def snapshot(self) -> dict:
        """Where the stream is now, and this rank's counters: local, no collective (the loop takes one
        before every step; state_dict(snapshot) is the saved state of that point)."""
        return {"position": self.position, "micro": self.delivered, "local": Counter(self.local)}

    def state_dict(self, snapshot: dict | None = None) -> dict:
        """The position in the global order and the run's bad-sample counters (now, or at a snapshot):
        the same on every rank. Under torch.distributed the counters are summed over the ranks, so every
        rank must call it (the training loop's save does)."""
        at = snapshot or self.snapshot()
        bad = self.base + _summed_over_ranks(at["local"], self.world_size)
        return {"version": STATE_VERSION, "position": at["position"], "micro": at["micro"],
                "global_batch": self.global_batch, "seed": self.dataset.seed,
                "samples": [s.total for s in self.order.sources], "bad": dict(sorted(bad.items()))}

    def load_state_dict(self, state: dict) -> None:
        """Call before the first batch: continues with exactly the next unseen samples, on any number of
        ranks and workers."""
        if self._iterator is not None:
            raise RuntimeError("load_state_dict must be called before iterating")
        if state.get("version") != STATE_VERSION:
            log.warning("the data state was saved by the per-reader order of an earlier version: the shard order "
                        "starts from its beginning")
            return
        samples = [s.total for s in self.order.sources]
        if state["global_batch"] != self.global_batch or state["samples"] != samples:
            raise UserError(f"the checkpoint's data position is for {state['samples']} samples in global batches of "
                            f"{state['global_batch']}, not {samples} in batches of {self.global_batch}: resume with "
                            "the same train_shards and batch_size")
        if state.get("seed", self.dataset.seed) != self.dataset.seed:
            raise UserError(f"the checkpoint's shard order has seed {state['seed']}, this run {self.dataset.seed}")
        self.position, self.delivered = int(state["position"]), int(state.get("micro", 0))
        self.base, self.local = Counter(state.get("bad", {})), Counter()

    def bad_samples(self) -> dict[str, int]:
        """Skipped samples by reason: the run's total at the resumed checkpoint plus this rank's since."""
        return dict(self.base + self.local)

    def close(self) -> None:
        """Ends the workers and removes the rank's shard cache (also when the stream is dropped)."""
        self._iterator = None
        if self._views is not None:
            self._views.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __del__(self) -> None:
        self.close()


def _summed_over_ranks(counts: Counter, world_size: int) -> Counter:
    """The counters summed over the ranks, on the CPU (a gloo group beside an NCCL one): the training loop
    takes the state before every step, and a device tensor would cost a host sync each time."""
    if world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Counter(counts)
    values = torch.tensor([counts.get(r, 0) for r in REASONS], dtype=torch.int64)
    torch.distributed.all_reduce(values, group=host_group())
    return Counter({r: int(v) for r, v in zip(REASONS, values.tolist()) if v})
