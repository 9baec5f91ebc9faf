"""Surviving what goes wrong at scale: non-finite steps, preemption and a data source that fails."""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

from ..checkpoint import LATEST
from ..errors import DataSourceFailed, UserError, one_line

# The exit status of a run stopped by SIGTERM after saving its checkpoint: EX_TEMPFAIL of sysexits.h
# ("try again later"). Not 0, so SLURM --requeue, torchrun and scripts see an unfinished run; not 143
# (what dying of SIGTERM looks like), so they can tell a clean preemption from a crash.
PREEMPTED_EXIT = 75
# A run whose data source failed for good, after saving its checkpoint: EX_UNAVAILABLE of sysexits.h.
DATA_FAILED_EXIT = DataSourceFailed.exit_code


class TrainingDiverged(UserError):
    """Too many consecutive non-finite steps; the last good checkpoint is kept."""


class BadStepGuard:
    """A step whose loss or gradient norm is NaN/inf is skipped (no optimizer update) and counted;
    `max_consecutive` such steps in a row stop the run. Every rank sees the same all-reduced loss and
    global gradient norm, so all ranks take the same decision."""

    def __init__(self, max_consecutive: int, skipped: int = 0):
        self.max_consecutive, self.skipped, self.consecutive = max_consecutive, skipped, 0

    def check(self, step: int, loss: float, grad_norm: float, last_checkpoint: str | None) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
            raise TrainingDiverged(
                f"stopped at step {step}: {self.consecutive} consecutive steps had a non-finite loss or gradient "
                f"(loss {loss}, grad norm {grad_norm}); {where}. Lower the learning rate or check the data, "
                f"then continue with --resume")
        return False


class PreemptionFlag:
    """Turns SIGTERM (what SLURM, Kubernetes and torchrun send before killing) into a flag that the
    loop checks after each step: it then writes a checkpoint and returns. Installed only in the main
    thread; the previous handler comes back on exit."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self) -> "PreemptionFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def data_source_failed(err: Exception, checkpoints: Path) -> UserError:
    """The error a run stops with when its data source failed for good (the loop has saved the last step
    taken). A run with no checkpoint never had its data (a wrong source: exit 2); any other has lost its
    data on the way and continues from its checkpoint once the data is back (DataSourceFailed, exit 69)."""
    pointer = checkpoints / LATEST
    if not pointer.is_file():
        return UserError(one_line(err))
    return DataSourceFailed(f"the training data failed ({one_line(err)}); the run is saved in "
                            f"{checkpoints / pointer.read_text().strip()}: continue with --resume once the data "
                            f"is back")
