"""What every DataLoader worker of a training run does first."""

from __future__ import annotations

import signal


def ignore_sigterm(worker_id: int = 0) -> None:
    """worker_init_fn: SLURM's scancel / --signal and Kubernetes send SIGTERM to the whole process
    group. A worker that died of it would take the run down before the main process could save; so
    workers ignore it, the main process saves and exits, and the workers end with it (DataLoader
    shuts them down, and they exit by themselves when their parent is gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
