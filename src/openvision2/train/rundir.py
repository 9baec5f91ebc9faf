"""A run directory belongs to one run: it is locked while the run lives, never silently reused, and
it records every choice the run made automatically so that a resume makes the same ones.

    OUT/.lock          flock'ed by the run's main process for its whole life (the OS releases it when
                       the process dies, however it dies); holds its pid for the error message
    OUT/config.json    the configuration, plus a `resolved` section: precision, parallel mode,
                       intra-op threads, world size, tokenizer (what "auto" and the defaults became)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import UserError

LOCK = ".lock"
CONFIG = "config.json"
# What a run writes into OUT; `--overwrite` removes these (and nothing else) before a fresh start.
RUN_FILES = ("checkpoints", "metrics.jsonl", CONFIG, "tensorboard", "wandb")


def make_dir(path: Path) -> None:
    """mkdir -p with one line for what goes wrong (read-only filesystem, a file in the way, permissions)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"cannot use {path} as a run directory: {reason} ({err.filename or path}); "
                        f"choose a writable --out") from None


@contextlib.contextmanager
def locked(out_dir: Path, what: str = "run"):
    """Hold OUT/.lock exclusively for the duration; a second run into OUT fails in one line."""
    make_dir(out_dir)
    handle = open(out_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"{out_dir} is in use by another {what} (pid {holder}); wait for it to finish, "
                        f"or choose another --out") from None
    except OSError as err:  # a filesystem without locks (e.g. Lustre mounted without -o flock)
        from ..logs import get_logger

        get_logger("train").warning(f"cannot lock {out_dir / LOCK} ({err.strerror}): nothing stops a second "
                                    f"run from using {out_dir} at the same time")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock; the file stays (removing it would race a waiter)


@contextlib.contextmanager
def owned(out_dir: Path, world, resume: bool = False, overwrite: bool = False, what: str = "run", claim=None):
    """Rank 0 locks out_dir and checks that this run may use it (`claim`, by default: fresh runs need
    an empty directory); every rank gets the same answer."""
    from .distributed import broadcast_object

    problem, stack = None, contextlib.ExitStack()
    if world.is_main:
        try:
            stack.enter_context(locked(out_dir, what))
            claim() if claim else claim_fresh(out_dir, resume, overwrite)
        except UserError as err:
            stack.close()
            problem = str(err)
    problem = broadcast_object(problem, world)
    if problem:
        raise UserError(problem)
    with stack:
        yield


def existing_run_files(out_dir: Path) -> list[str]:
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK and not p.name.startswith(".write-test-"))


def claim_fresh(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run in a directory that holds anything (another run, unrelated files)
    unless --resume continues it or --overwrite replaces the previous run's files."""
    found = existing_run_files(out_dir)
    if not found or resume:
        return
    if overwrite:
        for name in RUN_FILES:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    raise UserError(f"{out_dir} is not empty ({shown}): continue its run with --resume, replace it with "
                    f"--overwrite, or choose another --out")


def recorded(out_dir: Path) -> dict:
    """The `resolved` section of OUT/config.json ({} for a new run or one written before it existed)."""
    path = out_dir / CONFIG
    if not path.is_file():
        return {}
    try:
        resolved = json.loads(path.read_text()).get("resolved", {})
        if not isinstance(resolved, dict):
            raise ValueError
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{path} is unreadable or not a JSON object: restore it, or start a new run "
                        f"directory") from None
    expected = {"precision": str, "parallel": str, "tokenizer": str, "threads": int, "world_size": int}
    wrong = [k for k, kind in expected.items() if k in resolved and type(resolved[k]) is not kind]
    if wrong or resolved.get("threads", 1) < 1:
        raise UserError(f"{path}: the recorded {', '.join(wrong) or 'threads'} is not valid; restore the file, "
                        f"or start a new run directory")
    return resolved


def reconcile(requested: dict[str, str], automatic: dict[str, str], previous: dict, where: Path) -> dict[str, str]:
    """The value of each automatic choice: the previous run's where one was recorded (a request of
    "auto" takes it; an explicit request must agree with it), else this run's own resolution."""
    chosen = {}
    for key, value in automatic.items():
        before = previous.get(key)
        if before is None:
            chosen[key] = value
            continue
        asked = requested.get(key, "auto")
        if asked not in ("auto", before):
            raise UserError(f"{key}={asked} contradicts {key}={before} recorded in {where / CONFIG}: resume "
                            f"with {key}={before} (or auto), or start a new run directory")
        chosen[key] = before
    return chosen


def apply_threads(threads: int) -> None:
    """Reuse the recorded intra-op thread count: the GEMM blocking (and so the bits) depend on it."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
