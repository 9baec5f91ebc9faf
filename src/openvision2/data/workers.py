"""What every DataLoader worker of a training run does first, and how the main process ends them."""

from __future__ import annotations

import atexit
import ctypes
import logging
import logging.handlers
import multiprocessing
import multiprocessing.util  # noqa: F401  (registers its exit handler before ours below)
import os
import signal
import weakref

from torch.utils.data import DataLoader

from ..logs import ROOT

_workers: weakref.WeakSet = weakref.WeakSet()  # worker processes (they ignore SIGTERM) of this process's loaders
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_log_queue = None  # the workers' log records travel through it to this process (one listener thread)


def init_worker(worker_id: int = 0) -> None:
    """worker_init_fn of every loader of a run. A worker ignores SIGTERM: SLURM's scancel / --signal and
    Kubernetes send it to the whole process group, and a worker that died of it would take the run down
    before the main process could save; the main process saves and exits, and the workers end with it
    (see `iterate`). A worker dies at once with its main process, however that dies (kill -9 included).
    Its log records are shown by the main process, which names a bad sample once however many workers
    meet it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _send_logs_to_parent()


def _die_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when its parent dies, so no orphaned worker keeps
    reading shards (or its share of the machine) after a kill -9 of the run."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the DataLoader's own watchdog ends orphans (in ~5 s)
        return
    parent = multiprocessing.parent_process()
    if parent is None or os.getppid() != parent.pid:
        # Started through a fork server (a run launched by start_processes(..., "forkserver")): the
        # kernel's parent is the server, not the run, so the signal would follow the wrong process.
        # The DataLoader's own watchdog ends such a worker when the run dies.
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent.pid:  # the run died between the check above and prctl taking effect
        os._exit(1)


def _send_logs_to_parent() -> None:
    if _log_queue is None:  # a loader not started through `iterate`, or a non-fork start method
        return
    _log_queue.cancel_join_thread()  # a worker ends without waiting for its last records to be read
    root = logging.getLogger(ROOT)
    root.handlers = [logging.handlers.QueueHandler(_log_queue)]
    root.propagate = False


class _Forward(logging.Handler):
    """The main process's end of the queue: a worker's record goes through the logger it was made by."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _listen_to_workers() -> None:
    global _log_queue
    if _log_queue is None:
        _log_queue = multiprocessing.get_context("fork").Queue()
        logging.handlers.QueueListener(_log_queue, _Forward()).start()  # a daemon thread, for the process's life


def iterate(loader: DataLoader):
    """iter(loader), its workers ended when this process exits, however it exits. An iterator kept
    alive by an exception's traceback is never shut down by DataLoader itself, and multiprocessing's
    exit handler (SIGTERM, then join) would wait forever for workers that ignore SIGTERM."""
    if loader.num_workers:
        _listen_to_workers()
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
