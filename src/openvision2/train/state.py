"""Training checkpoints: a resumable sharded state plus a consolidated export, written atomically.

    checkpoints/
      step-0000400/
        model.safetensors, config.json, tokenizer files   consolidated export (`ov2 caption` reads it)
        dcp/                                              model + optimizer, sharded (torch.distributed.checkpoint)
        rank-00000.pt ...                                 per rank: step, schedule, loader position, RNG states
      latest                                              name of the newest complete checkpoint

Every rank writes into `.tmp-step-N/`; only when all have finished does rank 0 rename it to
`step-N/` and then replace `latest`, so a crash during a save leaves the previous checkpoint as the
one to resume from. Loading never executes code: DCP tensors, safetensors, JSON, and the per-rank
file through torch.load(weights_only=True) (tensors, numbers, strings, lists and dicts only).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from ..checkpoint import CONFIG, LATEST, WEIGHTS, mark_latest, resolve_checkpoint
from ..errors import UserError
from .distributed import World, barrier

SHARDS = "dcp"
TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def single_process_quiet():
    """DCP warns that it runs without a process group, which is what a single process means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_gauss": [int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model on CPU with plain parameter names, on rank 0 (other ranks get {}); collective
    under FSDP, so every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def write_export(directory: Path, state: dict[str, torch.Tensor], model_config: dict, tokenizer, extra: dict) -> None:
    """The same files as openvision2.checkpoint.save_checkpoint, so load_checkpoint reads them."""
    save_file({k: v.detach().contiguous() for k, v in state.items()}, directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps({"model": model_config, **extra}, indent=2) + "\n")
    tokenizer.save(directory)


def save_training_state(checkpoints: Path, step: int, model: torch.nn.Module, optimizer, tokenizer,
                        model_config: dict, train_state: dict, extra: dict, world: World,
                        keep: int) -> Path:
    name = f"step-{step:07d}"
    tmp, final = checkpoints / f"{TMP_PREFIX}{name}", checkpoints / name
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    model_state, optim_state = get_state_dict(model, optimizer)
    with single_process_quiet():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / SHARDS)
    torch.save({**train_state, "rng": rng_state()}, tmp / f"rank-{world.rank:05d}.pt")
    full = full_model_state(model)
    if world.is_main:
        write_export(tmp, full, model_config, tokenizer, {"step": step, **extra})
    barrier(world)
    if world.is_main:
        publish(tmp, final)
        mark_latest(checkpoints, name)
        prune(checkpoints, keep)
    barrier(world)
    return final


def publish(tmp: Path, final: Path) -> None:
    """Make a finished checkpoint visible under its final name (a rename: atomic on one filesystem)."""
    if final.exists():  # the same step saved again after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)


def prune(checkpoints: Path, keep: int) -> None:
    latest = (checkpoints / LATEST).read_text().strip()
    for old in sorted(checkpoints.glob("step-*"))[:-keep]:
        if old.name != latest:
            shutil.rmtree(old)


def clean_partial_saves(checkpoints: Path) -> None:
    """Remove what a crash during a save left behind (never a published checkpoint)."""
    for partial in checkpoints.glob(f"{TMP_PREFIX}step-*"):
        shutil.rmtree(partial, ignore_errors=True)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    pointer = checkpoints / LATEST
    if not pointer.is_file():
        return None
    directory = checkpoints / pointer.read_text().strip()
    if not (directory / SHARDS / ".metadata").is_file():
        raise UserError(f"{pointer} names {directory.name}, which has no resumable state ({SHARDS}/.metadata): "
                        f"it was written by an older version or damaged; start a new run directory")
    return directory


def load_training_state(directory: Path, model: torch.nn.Module, optimizer, world: World) -> dict:
    """Restore model, optimizer and RNG in place; returns the per-rank train state (step, loader, ...)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    # The template has optimizer state for every parameter (get_state_dict creates it), the checkpoint
    # only for those that ever had a gradient (not e.g. OpenVision 2's unused pooled-output norm).
    saved_keys = dcp.FileSystemReader(directory / SHARDS).read_metadata().state_dict_metadata.keys()
    for name in list(optim_state["state"]):
        if not any(key.startswith(f"optim.state.{name}.") for key in saved_keys):
            del optim_state["state"][name]
    state = {"model": model_state, "optim": optim_state}
    try:
        with single_process_quiet():
            dcp.load(state, checkpoint_id=directory / SHARDS)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"], options=StateDictOptions(strict=False))
    except (RuntimeError, ValueError, dcp.api.CheckpointException) as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot resume from {directory}: it does not fit this run's model or optimizer "
                        f"({first_line}); resume with the configuration it was saved with") from None
    own = directory / f"rank-{world.rank:05d}.pt"
    # A resume on more ranks than saved takes rank 0's file (the synthetic stream is rank-independent).
    train_state = torch.load(own if own.is_file() else directory / "rank-00000.pt", weights_only=True)
    set_rng_state(train_state.pop("rng"))
    return train_state


def load_weights_from(path: str | Path, model: torch.nn.Module) -> Path:
    """Initialise every weight from a checkpoint or run directory (the next curriculum stage)."""
    directory = resolve_checkpoint(path)
    full = load_file(directory / WEIGHTS)
    try:
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=True))
    except RuntimeError as err:
        raise UserError(f"cannot initialise from {directory}: the weights do not fit this model ({err})") from None
    return directory
