"""What every DataLoader worker of a training run does first, and how the main process ends them."""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (registers its exit handler before ours below)
import signal
import weakref

from torch.utils.data import DataLoader

_workers: weakref.WeakSet = weakref.WeakSet()  # worker processes (they ignore SIGTERM) of this process's loaders


def ignore_sigterm(worker_id: int = 0) -> None:
    """worker_init_fn: SLURM's scancel / --signal and Kubernetes send SIGTERM to the whole process
    group. A worker that died of it would take the run down before the main process could save; so
    workers ignore it, the main process saves and exits, and the workers end with it (see
    `iterate`: multiprocessing's own exit handler ends children with SIGTERM, which they ignore)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def iterate(loader: DataLoader):
    """iter(loader), its workers ended when this process exits, however it exits. An iterator kept
    alive by an exception's traceback is never shut down by DataLoader itself, and multiprocessing's
    exit handler (SIGTERM, then join) would wait forever for workers that ignore SIGTERM."""
    iterator = iter(loader)
    _workers.update(getattr(iterator, "_workers", ()))
    return iterator


def _end_workers() -> None:
    # DataLoader's SIGCHLD handler reports a worker killed by a signal as an error; at exit it is not one.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in list(_workers):
        if worker.is_alive():
            worker.kill()


atexit.register(_end_workers)  # registered after multiprocessing's exit handler, so it runs before it
