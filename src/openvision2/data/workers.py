"""What every DataLoader worker of a training run does first, and how the main process ends them."""

from __future__ import annotations

import atexit
import signal
import weakref

from torch.utils.data import DataLoader

_started: weakref.WeakSet = weakref.WeakSet()  # iterators of live loaders whose workers ignore SIGTERM


def ignore_sigterm(worker_id: int = 0) -> None:
    """worker_init_fn: SLURM's scancel / --signal and Kubernetes send SIGTERM to the whole process
    group. A worker that died of it would take the run down before the main process could save; so
    workers ignore it, the main process saves and exits, and the workers end with it (see
    `iterate`: multiprocessing's own exit handler ends children with SIGTERM, which they ignore)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def iterate(loader: DataLoader):
    """iter(loader), its workers ended when this process exits, however it exits. An iterator kept
    alive by an exception's traceback is never garbage-collected, so DataLoader's own shutdown does
    not run; multiprocessing's exit handler would then wait forever for workers that ignore SIGTERM."""
    iterator = iter(loader)
    if loader.num_workers:
        if not _started:
            atexit.register(_end_workers)  # registered after multiprocessing's handler, so it runs first
        _started.add(iterator)
    return iterator


def _end_workers() -> None:
    for iterator in list(_started):
        iterator._shutdown_workers()  # what DataLoader does on garbage collection: a sentinel to each worker
        for worker in iterator._workers:  # one that did not take it within torch's grace period
            if worker.is_alive():
                worker.kill()
