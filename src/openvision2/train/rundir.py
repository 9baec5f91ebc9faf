"""A run directory belongs to one run: it is locked while the run lives, never silently reused, and
it records every choice the run made automatically so that a resume makes the same ones.

    OUT/.lock          locked (a POSIX record lock, fcntl) by the run's main process for its whole life:
                       the OS releases it when the process dies, however it dies, and forked children
                       (DataLoader workers) never hold it; holds its pid for the error message
    OUT/.ov2-run       the marker: OUT is a run directory of ov2. `--resume` continues only such a
                       directory (or starts in an empty one); `--overwrite` replaces only its files
    OUT/config.json    the configuration, plus a `resolved` section: precision, parallel mode,
                       intra-op threads, world size, tokenizer (what "auto" and the defaults became)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

import torch

from ..durable import write_durably
from ..errors import UserError

LOCK = ".lock"
MARKER = ".ov2-run"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
# What a run writes into OUT; `--overwrite` removes these (and nothing else) before a fresh start.
RUN_FILES = ("checkpoints", METRICS, CONFIG, "tensorboard", "wandb")
_LOCK_BUSY = (errno.EAGAIN, errno.EACCES)  # what fcntl answers for a lock another process holds
_held: set[tuple[int, int]] = set()  # (device, inode) of the locks this process holds (POSIX locks are per process)


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


def _not_a_lock(path: Path, kind: str) -> UserError:
    return UserError(f"{path} is {kind}, not the lock file a run writes: it is left alone; remove it yourself, "
                     f"or choose another --out")


def _open_lock(path: Path) -> int:
    """The lock file's descriptor: created if missing, never through a link, never truncated here (a
    planted link or FIFO is not followed or waited on; a hard link to another file is refused)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _not_a_lock(path, "a symbolic link") from None
        if err.errno == errno.EISDIR:
            raise _not_a_lock(path, "a directory") from None
        raise UserError(f"cannot open {path}: {err.strerror}; choose a writable --out") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise _not_a_lock(path, "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link")
    return fd


def _in_use(out_dir: Path, what: str, holder: str) -> UserError:
    return UserError(f"{out_dir} is in use by another {what} (pid {holder}); wait for it to finish, "
                     f"or choose another --out")


@contextlib.contextmanager
def locked(out_dir: Path, what: str = "run"):
    """Hold OUT/.lock exclusively for the duration; a second run into OUT fails in one line. Yields
    whether this call created the lock file."""
    make_dir(out_dir)
    path = out_dir / LOCK
    created = True
    with contextlib.suppress(FileNotFoundError):
        before = os.stat(path, follow_symlinks=False)
        created = False
        if (before.st_dev, before.st_ino) in _held:  # opening and closing it again would drop our lock
            raise _in_use(out_dir, what, str(os.getpid()))
    fd = _open_lock(path)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in _LOCK_BUSY:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise _in_use(out_dir, what, holder) from None
        from ..logs import get_logger  # a filesystem without locks (e.g. Lustre mounted without -o flock)

        get_logger("train").warning(f"cannot lock {path} ({err.strerror}): nothing stops a second "
                                    f"run from using {out_dir} at the same time")
    _held.add(key)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield created
    finally:
        _held.discard(key)
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a waiter)


@contextlib.contextmanager
def owned(out_dir: Path, world, resume: bool = False, overwrite: bool = False, what: str = "run", claim=None):
    """Rank 0 locks out_dir and checks that this run may use it (`claim`, by default: fresh runs need
    an empty directory, --resume a run of ours); every rank gets the same answer."""
    from .distributed import broadcast_object

    problem, stack = None, contextlib.ExitStack()
    if world.is_main:
        created = False
        try:
            created = stack.enter_context(locked(out_dir, what))
            claim() if claim else claim_for_run(out_dir, resume, overwrite)
        except UserError as err:
            if created:  # a directory refused (not a run of ours) keeps no trace of the attempt
                (out_dir / LOCK).unlink(missing_ok=True)
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
    return sorted(p.name for p in out_dir.iterdir()
                  if p.name not in (LOCK, MARKER) and not p.name.startswith(".write-test-"))


def is_run(out_dir: Path) -> bool:
    """OUT is a run directory of ov2: it has our marker, or (a run from a version before the marker)
    a training checkpoint in our own format, or a config.json with our sections and resolved choices."""
    if (out_dir / MARKER).is_file():
        return True
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for step in checkpoints.glob("step-*"):
            if (step / "dcp" / ".metadata").is_file() and any(step.glob("rank-*.pt")):
                return True
    try:
        saved = json.loads((out_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and all(isinstance(saved.get(k), dict) for k in ("model", "optim", "run", "resolved"))


def claim_for_run(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run needs an empty directory; --resume continues a run of ours (or starts in an empty
    directory); --overwrite replaces a run of ours. Anything else is refused before a file is touched."""
    found = existing_run_files(out_dir)
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    if found and not is_run(out_dir):
        if resume or overwrite:
            raise UserError(f"{out_dir} is not a run directory of ov2 (it holds {shown}, not written by a run): "
                            f"{'--resume continues' if resume else '--overwrite replaces'} only a run; "
                            f"choose another --out")
        raise UserError(f"{out_dir} is not empty ({shown}) and is not a run directory: choose another --out")
    if found and not resume:
        if not overwrite:
            raise UserError(f"{out_dir} is not empty ({shown}): it holds a run; continue it with --resume, "
                            f"replace it with --overwrite, or choose another --out")
        remove_run_files(out_dir)
    write_durably(out_dir / MARKER, "a run directory of ov2 train: --resume continues it, --overwrite replaces it\n")


def remove_run_files(out_dir: Path) -> None:
    """--overwrite: delete what a run wrote, never through a link (a linked checkpoints/ is refused)."""
    links = [name for name in RUN_FILES if (out_dir / name).is_symlink()]
    if links:
        raise UserError(f"{out_dir / links[0]} is a symbolic link: --overwrite deletes only what a run wrote in "
                        f"{out_dir}, never through a link; remove the link yourself, or choose another --out")
    for name in RUN_FILES:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def rewind_metrics(out_dir: Path, step: int) -> set[str]:
    """A resume from `step`: drop metrics.jsonl's records of later steps (the run writes them again)
    and any torn last line, durably; returns the keys already recorded at `step`."""
    path = out_dir / METRICS
    if not path.is_file():
        return set()
    kept, at_step, changed = [], set(), False
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            recorded_step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            changed = True  # a line torn by a kill
            continue
        if recorded_step > step:
            changed = True
            continue
        kept.append(line)
        if recorded_step == step:
            at_step.update(record)
    if changed:
        write_durably(path, "".join(f"{line}\n" for line in kept))
    return at_step


# What `--resume KEY=VALUE` may change: how long the run goes on, how often it logs, saves and evaluates,
# how the work is spread over devices and workers and how shards are fetched. Any other key changes
# what the steps already taken computed (seed, learning rate, keep ratio, data, model), so a resume
# that changes it is refused: it would rewrite config.json with values that do not describe the run.
RESUME_MAY_CHANGE = ("optim.steps", "run.log_every", "run.ckpt_every", "run.keep_checkpoints", "run.max_bad_steps",
                     "run.peak_tflops", "run.tensorboard", "run.init_from", "parallel.*", "data.num_workers",
                     "data.shard_cache", "data.shard_read_ahead", "data.shard_timeout", "data.shard_retries",
                     "data.shard_deadline", "data.shard_max_bytes",
                     "data.val_shards", "data.val_samples", "eval.*", "model.eval_keep_ratio", "model.logits_chunk")


def check_resume_settings(config, checkpoint: Path) -> None:
    """Refuse a resume whose settings differ from those its checkpoint was trained with (its config.json's
    `train` section) in a key outside RESUME_MAY_CHANGE."""
    from .config import DOTTED_KEYS, TrainConfig

    saved = json.loads((checkpoint / CONFIG).read_text()).get("train")
    if not isinstance(saved, dict):  # a checkpoint from before the training config was saved in it
        return
    before, now = TrainConfig.from_dict(saved).to_dict(), config.to_dict()
    for key, (section, f) in DOTTED_KEYS.items():
        if key in RESUME_MAY_CHANGE or f"{section}.*" in RESUME_MAY_CHANGE:
            continue
        there, here = before[section][f.name], now[section][f.name]
        if there != here:
            raise UserError(f"--resume with {key}={here} changes the run in {checkpoint.parent.parent} "
                            f"(its steps so far used {key}={there}): resume without it, or start a new run "
                            f"directory (a resume may change steps, the logging, checkpoint and evaluation settings, the "
                            f"parallelism and the data workers; docs/RELIABILITY.md lists them)")


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
