"""The package's one logging setup. Progress messages (`ov2 train`: the model, resumes, evaluations,
recipe stages) are INFO records of the "openvision2.*" loggers and go to stdout; warnings (e.g. a
skipped bad sample) go to stderr as "ov2 COMMAND: message". Both are written through tqdm.write,
so a running progress bar is redrawn below them instead of being torn. What a command prints as its
result (captions, --json objects, tables) stays print().
"""

from __future__ import annotations

import logging
import sys

ROOT = "openvision2"


class TqdmHandler(logging.Handler):
    """Writes each record with tqdm.write: INFO and below to stdout, warnings and errors to stderr."""

    def __init__(self, command: str = ""):
        super().__init__()
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # here, not at import: `ov2 --help` stays fast

        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                stream = sys.stderr
                message = f"ov2 {self.command}: {message}" if self.command else message
            else:
                stream = sys.stdout
            tqdm.write(message, file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


class ShowOnce(logging.Filter):
    """A record logged with extra={"once": key} is shown the first time its key comes, in this process:
    DataLoader workers send their records here (data/workers.py), so a bad sample that several workers
    meet (each reads every shard in some epoch) is named once, not once per worker."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "once", None)
        if key is None:
            return True
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging(command: str = "", level: int = logging.INFO) -> None:
    """Route the "openvision2" loggers through one TqdmHandler (idempotent; the CLI names its command)."""
    root = logging.getLogger(ROOT)
    handler = next((h for h in root.handlers if isinstance(h, TqdmHandler)), None)
    if handler is None:
        handler = TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(ShowOnce())
        root.addHandler(handler)
        root.propagate = False
    handler.command = command or handler.command
    root.setLevel(level)


def get_logger(name: str) -> logging.Logger:
    """The logger of a part of the package, e.g. get_logger("train") -> "openvision2.train"."""
    return logging.getLogger(f"{ROOT}.{name}")


def count_skipped(log: logging.Logger, skipped: dict[str, int], reason: str, what: str) -> None:
    """Count one bad sample under `reason`; the first of each reason is named as a warning, the rest are
    only counted (the caller reports the totals), so a bad dataset cannot flood the terminal."""
    if not skipped.get(reason):
        log.warning("skipping %s (%s); further ones like it are counted, not logged", what, reason)
    skipped[reason] = skipped.get(reason, 0) + 1
