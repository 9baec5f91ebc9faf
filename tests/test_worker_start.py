"""A run's DataLoader workers start however the run's process was started: under a fork server their
kernel parent is the server, not the run (they used to exit at once: 'worker exited unexpectedly')."""

from __future__ import annotations

import os

import torch.multiprocessing
from torch.utils.data import DataLoader

from openvision2.data.workers import init_worker, iterate


def _first_batch(rank: int, out: str) -> None:
    try:
        batch = next(iterate(DataLoader(list(range(8)), batch_size=2, num_workers=1, worker_init_fn=init_worker)))
        with open(out, "w") as f:
            f.write(",".join(str(int(v)) for v in batch))
    finally:
        os._exit(0)  # no interpreter teardown in the child (see tests/scaleout_helpers.py)


def test_workers_start_in_a_process_launched_by_a_fork_server(tmp_path):
    out = tmp_path / "batch.txt"
    torch.multiprocessing.start_processes(_first_batch, args=(str(out),), nprocs=1, join=True,
                                          start_method="forkserver")
    assert out.read_text() == "0,1"
