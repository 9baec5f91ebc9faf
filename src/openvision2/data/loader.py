"""Batches from a ShardDataset through a DataLoader, with an exact, checkpointable data state.

Each worker builds whole batches and attaches its slot's state after that batch. The main process
keeps, per slot, the state carried by the last batch it handed out; batches prefetched but never
consumed do not count. So `state_dict()` taken after step N resumes with batch N + 1 exactly, for any
number of workers, as long as the run resumes with the same number of slots (ranks x workers).
"""

from __future__ import annotations

import logging
from collections import Counter

from torch.utils.data import DataLoader

from .shards import ShardDataset
from .workers import init_worker, iterate

log = logging.getLogger("openvision2.data")


class ShardBatches:
    """An endless iterator of batches (dicts from the dataset's collate), with state_dict /
    load_state_dict and bad_samples() (counters by reason, for the metrics)."""

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, prefetch_factor: int = 2):
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self._iterator = None
        self._states: dict[int, dict] = {}
        self._num_slots: int | None = None

    def _start(self) -> None:
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor if self.num_workers else None,
                            persistent_workers=False, worker_init_fn=init_worker)
        self._iterator = iterate(loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._start()
        batch = next(self._iterator)
        slot, num_slots, state = batch.pop("data_state")
        self._states[slot], self._num_slots = state, num_slots
        return batch

    def state_dict(self) -> dict:
        """This process's slots (resumed slots not yet read keep their resumed state)."""
        slots = {**self.dataset.resume, **self._states}
        return {"num_slots": self._num_slots or self._expected_slots(),
                "slots": {str(k): v for k, v in sorted(slots.items())}}

    def load_state_dict(self, state: dict) -> None:
        """Call before the first batch. With a different number of slots (other world size or worker
        count) the exact position cannot be kept: each slot then starts its next epoch."""
        if self._iterator is not None:
            raise RuntimeError("load_state_dict must be called before iterating")
        slots = {int(k): v for k, v in state.get("slots", {}).items()}
        expected = self._expected_slots()
        if state.get("num_slots") == expected:
            self.dataset.resume = slots
            return
        log.warning("data state saved with %s readers, resuming with %s: the exact position cannot be "
                    "kept, every reader starts its next epoch", state.get("num_slots"), expected)
        old_slots = int(state.get("num_slots") or 1)
        self.dataset.resume = {slot: _next_epoch_state(slots, old_slots, slot, expected, self.dataset)
                               for slot in range(expected)}

    def _expected_slots(self) -> int:
        from .shards import _rank_and_world

        _, world = _rank_and_world(self.dataset.rank, self.dataset.world_size)
        return world * max(1, self.num_workers)

    def bad_samples(self) -> dict[str, int]:
        """Skipped samples by reason, summed over this process's slots (cumulative over the run)."""
        total: Counter[str] = Counter()
        for state in {**self.dataset.resume, **self._states}.values():
            total.update(state.get("bad", {}))
        return dict(total)


def _next_epoch_state(old: dict[int, dict], old_slots: int, slot: int, num_slots: int,
                      dataset: ShardDataset) -> dict:
    """A fresh state for `slot` whose sources start after the furthest epoch any old slot reached."""
    from .shards import SlotStream

    stream = SlotStream(dataset, slot, num_slots)
    sources = []
    for i, source in enumerate(stream.streams):
        n = len(source.shards)
        old_per_epoch = {k: n if n < old_slots or source.with_replacement else len(range(k, n, old_slots))
                         for k in old}
        epochs = [s["sources"][i]["cursor"] // max(1, old_per_epoch[k])
                  for k, s in old.items() if i < len(s.get("sources", []))]
        sources.append({"cursor": (max(epochs, default=-1) + 1) * source.per_epoch, "pos": 0})
    bad: Counter[str] = Counter()
    if slot == 0:  # keep the run's counters once
        for s in old.values():
            bad.update(s.get("bad", {}))
    return {"emitted": 0, "sources": sources, "bad": dict(bad)}
