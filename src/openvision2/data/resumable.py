"""A training stream that can be checkpointed and resumed exactly, for any number of ranks.

The interface the training loop relies on (any loader may implement it, e.g. a WebDataset one):
    iter(loader)                    -> this rank's micro-batches, endlessly, from the current position
    loader.state_dict()             -> plain dict (ints, strings, lists) saying where the stream is
    loader.load_state_dict(state)   -> continue from that position; called before iter()
The state is saved per rank, so a loader whose position differs between ranks may keep its own.

For a map-style dataset (the embedded synthetic one) the stream is a function of (seed, position):
epoch e is a permutation of the dataset drawn from seed and e; global batch b covers positions
[b*B, (b+1)*B) of the concatenated epochs (a trailing partial batch of an epoch is dropped);
rank r takes the r-th contiguous slice of every global batch and cuts it into micro-batches.
The global batches are therefore the same whatever the number of ranks and micro-batches, and the
state is a single counter: the number of global batches consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from .workers import init_worker, iterate


def micro_batch_size(global_batch: int, world_size: int, micro_batches: int) -> int:
    """Samples per micro-batch on each rank; the one check that the global batch splits evenly."""
    if global_batch % (world_size * micro_batches):
        raise UserError(f"batch_size {global_batch} (the global batch) must be divisible by "
                        f"{world_size} ranks x grad_accum {micro_batches}")
    return global_batch // (world_size * micro_batches)


class ResumableBatches:
    def __init__(self, dataset: Dataset, global_batch: int, collate: Callable, *, rank: int = 0,
                 world_size: int = 1, micro_batches: int = 1, num_workers: int = 0, seed: int = 0):
        self.micro_size = micro_batch_size(global_batch, world_size, micro_batches)
        if len(dataset) < global_batch:
            raise UserError(f"the dataset has {len(dataset)} samples, fewer than one batch of {global_batch}: "
                            f"raise train_samples or lower batch_size")
        self.dataset, self.global_batch, self.collate = dataset, global_batch, collate
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.num_workers, self.seed = num_workers, seed
        self.batches_per_epoch = len(dataset) // global_batch
        self.position = 0  # global batches fully handed out to the caller
        self._delivered = 0  # micro-batches of the current global batch handed out

    def snapshot(self) -> dict:
        """The state now (ShardBatches' interface: there it avoids a collective per step)."""
        return self.state_dict()

    def state_dict(self, snapshot: dict | None = None) -> dict:
        return dict(snapshot) if snapshot else {"position": self.position, "micro": self._delivered, "seed": self.seed,
                                                "global_batch": self.global_batch, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_samples", len(self.dataset)) != len(self.dataset) or \
                state.get("global_batch", self.global_batch) != self.global_batch:
            raise UserError(f"the checkpoint's data position is for {state.get('num_samples')} samples in batches of "
                             f"{state.get('global_batch')}, not {len(self.dataset)} in batches of {self.global_batch}")
        self.seed = state.get("seed", self.seed)
        self.position, self._delivered = int(state["position"]), int(state.get("micro", 0))

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=generator)

    def _index_lists(self, start: int, skip_micro: int) -> Iterator[list[int]]:
        """This rank's micro-batches as index lists, from global batch `start` on."""
        epoch, order = None, None
        batch = start
        while True:
            if batch // self.batches_per_epoch != epoch:
                epoch = batch // self.batches_per_epoch
                order = self.permutation(epoch)
            offset = (batch % self.batches_per_epoch) * self.global_batch
            offset += self.rank * self.micro_size * self.micro_batches
            for micro in range(skip_micro, self.micro_batches):
                begin = offset + micro * self.micro_size
                yield order[begin:begin + self.micro_size].tolist()
            skip_micro, batch = 0, batch + 1

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(self.dataset, batch_sampler=self._index_lists(self.position, self._delivered),
                            collate_fn=self.collate, num_workers=self.num_workers,
                            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
                            worker_init_fn=init_worker)
        for micro_batch in iterate(loader):
            self._delivered += 1
            if self._delivered == self.micro_batches:
                self.position, self._delivered = self.position + 1, 0
            yield micro_batch
