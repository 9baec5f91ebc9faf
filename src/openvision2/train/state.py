"""Training checkpoints: a resumable sharded state plus a consolidated export, written atomically.

    checkpoints/
      step-0000400/
        model.safetensors, config.json, tokenizer files   consolidated export (`ov2 caption` reads it)
        dcp/                                              model + optimizer, sharded (torch.distributed.checkpoint)
        rank-00000.pt ...                                 per rank: step, schedule, loader position, RNG states
      latest                                              name of the newest complete checkpoint

Every rank writes into `.tmp-step-N/`; only when all have finished (and every file and directory
is fsynced) does rank 0 rename it to `step-N/` and then atomically replace `latest`, so a crash or a
power loss during a save leaves the previous checkpoint as the one to resume from. A newest
checkpoint that is nevertheless incomplete (truncated files, a missing pointer) is skipped for the
previous complete one, with a one-line warning. Before a save, free space is checked against the
last checkpoint's size (old checkpoints are pruned first when that makes room), and a checkpoint
whose weights are not finite is never published.

Loading never executes code: DCP's `.metadata` is read by an unpickler that only knows DCP's own
metadata types, DCP holds only tensors (the optimizer's hyperparameters come from the config), and
the per-rank file goes through torch.load(weights_only=True) (tensors, numbers, strings, lists, dicts).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
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

from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from ..durable import fsync_tree, replace_dir
from ..checkpoint import CONFIG, LATEST, WEIGHTS, mark_latest, resolve_checkpoint
from ..errors import UserError
from .distributed import World, all_reduce_sum, barrier, broadcast_object

SHARDS = "dcp"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
METADATA = ".metadata"
# Room asked for beyond the last checkpoint's size before a save (checkpoints grow a little).
SPACE_MARGIN = 1.1


class UnsafeCheckpoint(UserError):
    """A checkpoint file asks to run code on load: it was not written by DCP, and is refused."""


def _metadata_types() -> dict[tuple[str, str], object]:
    from torch.distributed.checkpoint import filesystem, metadata

    allowed = {("torch.distributed.checkpoint.metadata", name): getattr(metadata, name)
               for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                            "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout  # "torch.strided" -> layout
    allowed[("pathlib", "PosixPath")] = Path
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    allowed.update({("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    return allowed


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else: any other global (os.system, builtins.eval, ...)
    is refused before it can be called."""

    allowed = None

    def find_class(self, module: str, name: str):
        if MetadataUnpickler.allowed is None:
            MetadataUnpickler.allowed = _metadata_types()
        found = MetadataUnpickler.allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpoint(f"refusing {module}.{name}")
        return found


def read_metadata(shards: Path):
    """DCP's checkpoint metadata, read without executing code. Raises UnsafeCheckpoint for a file that
    names anything but DCP's metadata types, ValueError for an unreadable (e.g. truncated) one."""
    path = shards / METADATA
    try:
        metadata = MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except UnsafeCheckpoint as err:
        raise UnsafeCheckpoint(f"{path} is not a checkpoint's metadata ({err}): it may have been tampered "
                               f"with; it is not loaded. Resume from a checkpoint you trust") from None
    except Exception as err:  # EOFError, UnpicklingError, ...: a truncated or damaged file
        raise ValueError(f"{path} is unreadable ({type(err).__name__})") from None
    if type(metadata).__name__ != "Metadata" or not isinstance(getattr(metadata, "storage_data", None), dict):
        raise ValueError(f"{path} does not hold checkpoint metadata")
    return metadata


class SafeReader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorsOnlyPlanner(DefaultLoadPlanner):
    """We save only tensors; a non-tensor entry would be unpickled, so it may hold tensors only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


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


def weights_are_finite(model: torch.nn.Module, world: World) -> bool:
    """Every rank's parameters (its shards, under FSDP) are finite; the same answer on every rank."""
    bad = sum(int(not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()) for p in model.parameters())
    flag = torch.tensor([float(bad)], dtype=torch.float64, device=next(model.parameters()).device)
    return all_reduce_sum(flag, world).item() == 0


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def estimated_bytes(model: torch.nn.Module) -> int:
    """A first checkpoint's size: the weights in DCP, AdamW's two moments, and the consolidated export."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def make_room(checkpoints: Path, keep: int, step: int, estimate: int) -> None:
    """Before a save (rank 0): the new checkpoint needs about as much as the last one (the first one:
    `estimate`). If it does not fit, prune down to keep - 1 old checkpoints first (never `latest`); if it
    still does not fit, stop with "disk full" rather than fail inside torch half-way through the save."""
    published = sorted(checkpoints.glob("step-*"))
    need = int((directory_bytes(published[-1]) if published else estimate) * SPACE_MARGIN)
    if free_bytes(checkpoints) >= need:
        return
    if published:
        prune(checkpoints, max(keep - 1, 1))
    free = free_bytes(checkpoints)
    if free < need:
        raise UserError(f"disk full: saving step {step} needs about {need / 2**20:.1f} MiB in {checkpoints}, "
                        f"{free / 2**20:.1f} MiB are free; free some space (or lower keep_checkpoints), then "
                        f"continue with --resume")


def save_training_state(checkpoints: Path, step: int, model: torch.nn.Module, optimizer, tokenizer,
                        model_config: dict, train_state: dict, extra: dict, world: World,
                        keep: int) -> Path:
    name = f"step-{step:07d}"
    tmp, final = checkpoints / f"{TMP_PREFIX}{name}", checkpoints / name
    if not weights_are_finite(model, world):
        raise UserError(f"the weights are not finite after step {step}: not saved, so `latest` stays the last "
                        f"good checkpoint; lower the learning rate (or check its value) and continue with --resume")
    problem = None
    if world.is_main:
        try:
            checkpoints.mkdir(parents=True, exist_ok=True)
            make_room(checkpoints, keep, step, estimated_bytes(model))
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except UserError as err:
            problem = str(err)
    problem = broadcast_object(problem, world)
    if problem:
        raise UserError(problem)
    barrier(world)
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        # Tensors only: the optimizer's param_groups (lr, betas, ...) come from the config on resume.
        with single_process_quiet():
            dcp.save({"model": model_state, "optim": {"state": optim_state["state"]}}, checkpoint_id=tmp / SHARDS)
        own = tmp / f"rank-{world.rank:05d}.pt"
        torch.save({**train_state, "rng": rng_state()}, own)
        with open(own, "rb") as handle:
            os.fsync(handle.fileno())
        full = full_model_state(model)
        if world.is_main:
            write_export(tmp, full, model_config, tokenizer, {"step": step, **extra})
    except (Exception, dcp.api.CheckpointException) as err:  # DCP's collects each rank's error
        shutil.rmtree(tmp, ignore_errors=True)  # a partial save never stays to fill the disk further
        if disk_full(err):
            raise UserError(f"disk full while saving step {step} into {checkpoints}: free some space (or lower "
                            f"keep_checkpoints), then continue with --resume") from None
        raise
    barrier(world)
    if world.is_main:
        fsync_tree(tmp)
        publish(tmp, final)
        mark_latest(checkpoints, name)
        prune(checkpoints, keep)
    barrier(world)
    return final


def disk_full(err: BaseException) -> bool:
    """ENOSPC (or a quota) anywhere in err: raised itself, as the cause of another error, or among the
    failures DCP's CheckpointException collects from the ranks ({rank: (exception, traceback)})."""
    pending, seen = [err], set()
    while pending:
        item = pending.pop()
        if isinstance(item, tuple):
            item = item[0] if item else None
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        pending += [item.__cause__, item.__context__, *getattr(item, "failures", {}).values()]
    return False


def publish(tmp: Path, final: Path) -> None:
    """Make a finished checkpoint visible under its final name (renames: atomic on one filesystem);
    a checkpoint of the same step from an earlier attempt is moved aside, not deleted, first."""
    replace_dir(tmp, final)


def prune(checkpoints: Path, keep: int) -> None:
    latest = (checkpoints / LATEST).read_text().strip() if (checkpoints / LATEST).is_file() else None
    for old in sorted(checkpoints.glob("step-*"))[:-keep]:
        if old.name != latest:
            trash = old.with_name(f"{TRASH_PREFIX}{old.name}")
            os.replace(old, trash)  # gone from view at once: a half-deleted checkpoint is never picked up
            shutil.rmtree(trash)


def clean_partial_saves(checkpoints: Path) -> None:
    """Remove what a crash during a save left behind (never a published checkpoint)."""
    for partial in (*checkpoints.glob(f"{TMP_PREFIX}step-*"), *checkpoints.glob(f"{TRASH_PREFIX}step-*")):
        shutil.rmtree(partial, ignore_errors=True)


def load_rank_state(path: Path) -> dict:
    """A rank's train state (tensors, numbers, strings, lists, dicts). A file that needs more to load
    (a pickle naming a function: what a planted file does) is refused as UnsafeCheckpoint; torch's
    advice to load it anyway is not passed on."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: not ours either
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpoint(f"{path} is not a train state ov2 wrote (it holds more than tensors and numbers: "
                               f"it may have been tampered with); checkpoint {path.parent.name} is refused and "
                               f"nothing of it was loaded. Remove {path.parent} to resume from the previous "
                               f"checkpoint, or resume from a checkpoint you trust") from None


def incomplete(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from (a missing or truncated file), or None.
    Raises UnsafeCheckpoint for metadata that asks to run code."""
    from safetensors import safe_open

    try:
        if "model" not in json.loads((directory / CONFIG).read_text()):
            return f"{CONFIG} has no model"
        with safe_open(directory / WEIGHTS, "pt"):
            pass
        metadata = read_metadata(directory / SHARDS)
        for info in metadata.storage_data.values():
            part = directory / SHARDS / info.relative_path
            if not part.is_file() or part.stat().st_size < info.offset + info.length:
                return f"{SHARDS}/{info.relative_path} is missing or truncated"
        ranks = sorted(directory.glob("rank-*.pt"))
        if not ranks:
            return "rank-00000.pt is missing"
        for rank_file in ranks:
            load_rank_state(rank_file)
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # OSError, ValueError, SafetensorError, UnpicklingError, EOFError, RuntimeError
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def latest_checkpoint(checkpoints: Path, warn=print) -> Path | None:
    """The checkpoint to resume from: the one `latest` names if it is complete, else the newest
    complete one (with a one-line warning). None when nothing was saved; UserError when checkpoints
    exist but none is complete (they are left alone, never overwritten)."""
    pointer = checkpoints / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else None
    candidates = sorted(checkpoints.glob("step-*"), reverse=True) if checkpoints.is_dir() else []
    if named and (checkpoints / named).is_dir():
        candidates = [checkpoints / named] + [c for c in candidates if c.name < named]
    if not candidates:
        if named:
            raise UserError(f"{pointer} names {named}, which does not exist, and there is no other checkpoint: "
                            f"restore it, or start a new run directory")
        return None
    skipped = []
    for candidate in candidates:
        problem = incomplete(candidate)
        if problem is None:
            if named != candidate.name:
                why = "; ".join(skipped) if skipped else f"{pointer} {'names ' + named if named else 'is missing'}"
                warn(f"warning: resuming from {candidate.name}, the newest complete checkpoint ({why})")
            return candidate
        skipped.append(f"{candidate.name}: {problem}")
    raise UserError(f"no complete checkpoint in {checkpoints} ({'; '.join(skipped)}): nothing was overwritten; "
                    f"restore the files, or start a new run directory")


def load_training_state(directory: Path, model: torch.nn.Module, optimizer, world: World) -> dict:
    """Restore model, optimizer and RNG in place; returns the per-rank train state (step, loader, ...)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    # The template has optimizer state for every parameter (get_state_dict creates it), the checkpoint
    # only for those that ever had a gradient (not e.g. OpenVision 2's unused pooled-output norm).
    saved_keys = read_metadata(directory / SHARDS).state_dict_metadata.keys()
    for name in list(optim_state["state"]):
        if not any(key.startswith(f"optim.state.{name}.") for key in saved_keys):
            del optim_state["state"][name]
    state = {"model": model_state, "optim": {"state": optim_state["state"]}}
    scalar_views = _saved_scalar_views(state, read_metadata(directory / SHARDS).state_dict_metadata)
    try:
        with single_process_quiet():
            dcp.load(state, storage_reader=SafeReader(directory / SHARDS), planner=TensorsOnlyPlanner())
        for parent, key, vector in scalar_views:
            parent[key] = vector  # loaded in place through its view
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, {**state["optim"], "param_groups": optim_state["param_groups"]},
                                 options=StateDictOptions(strict=False))
    except (RuntimeError, ValueError, dcp.api.CheckpointException) as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot resume from {directory}: it does not fit this run's model or optimizer "
                        f"({first_line}); resume with the configuration it was saved with") from None
    own = directory / f"rank-{world.rank:05d}.pt"
    # A resume on more ranks than saved takes rank 0's file (the synthetic stream is rank-independent).
    train_state = load_rank_state(own if own.is_file() else directory / "rank-00000.pt")
    set_rng_state(train_state.pop("rng"))
    return train_state


def _saved_scalar_views(state: dict, saved: dict, prefix: str = "") -> list[tuple[dict, str, torch.Tensor]]:
    """A tensor saved 0-dim where the model now has shape [1] (OpenVision 1's logit_scale and its
    optimizer moments, before FSDP2 support) is loaded through a 0-dim view of the same storage:
    swaps those views into `state` and returns (dict, key, original) to put back after loading."""
    swapped = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            swapped += _saved_scalar_views(value, saved, f"{name}.")
        elif (type(value) is torch.Tensor and value.shape == (1,) and name in saved
              and tuple(getattr(saved[name], "size", (1,))) == ()):
            state[key] = value.view(())
            swapped.append((state, key, value))
    return swapped


def load_weights_from(path: str | Path, model: torch.nn.Module) -> Path:
    """Initialise every weight from a checkpoint or run directory (the next curriculum stage)."""
    directory = resolve_checkpoint(path)
    try:
        full = load_file(directory / WEIGHTS)
    except Exception as err:  # OSError, SafetensorError: a missing, truncated or damaged file
        raise UserError(f"cannot initialise from {directory}: {WEIGHTS} is unreadable ({err}); "
                        f"pass a complete checkpoint as init_from") from None
    try:
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=True))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(f"cannot initialise from {directory}: the weights do not fit this model "
                        f"({first_line})") from None
    return directory
