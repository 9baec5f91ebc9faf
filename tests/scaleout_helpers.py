"""Shared pieces of the scale-out tests: a tiny config, gloo workers, reading a run's results.

Workers run in spawned processes; each ends with destroy_process_group() and os._exit, which avoids
gloo's sporadic 'terminate called without an active exception' abort at interpreter exit."""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from openvision2.train.config import TrainConfig

TEST_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_config(**changes) -> TrainConfig:
    """A few-second run: 1-block encoder and decoder at 32 px, a 64-image dataset, batch 8."""
    config = TrainConfig(encoder="mu/8", decoder="mu", image_size=32, text_len=32, tokenizer="bpe",
                         bpe_vocab_size=128, train_samples=64, val_samples=8, num_workers=0, batch_size=8, steps=6,
                         warmup_steps=2, base_lr=2e-3 * 256 / 8, weight_decay=0.05, precision="fp32", log_every=1,
                         eval_every=1000, ckpt_every=1000, show_captions=1, tensorboard=False)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def overrides(config: TrainConfig) -> list[str]:
    """The config as `key=value` arguments for `ov2 train` (every field, so no preset leaks in)."""
    return [f"{section}.{k}={v}" for section, values in asdict(config).items() for k, v in values.items()
            if k not in ("tokenizer_path", "init_from", "text_encoder", "vocab_size", "pad_id", "mask_id")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = Path(run_dir) / "checkpoints"
    return load_file(checkpoints / (checkpoints / "latest").read_text().strip() / "model.safetensors")


def rewind_to(run_dir: Path, step: int) -> None:
    """The run as it was right after its step-`step` checkpoint (what a kill just after it leaves)."""
    import shutil

    checkpoints = Path(run_dir) / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if int(later.name.removeprefix("step-")) > step:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"step-{step:07d}\n")
    metrics = Path(run_dir) / "metrics.jsonl"
    records = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= step]
    metrics.write_text("\n".join(records) + "\n")


def run_jobs(rank: int, world_size: int, port: int, jobs: list[tuple[dict, str]]) -> None:
    """Spawned worker: train each (config fields, out dir) job as rank `rank` of `world_size`."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        from openvision2.train.loop import train

        for fields, out in jobs:
            train(TrainConfig(**fields), out, progress=False)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        end_worker(code)


def end_worker(code: int) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spawn(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, *args) on world_size spawned processes; fail if any fails."""
    env = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)  # spawned children inherit it: one thread each on a 2-core machine
    try:
        # A fork server that has imported the package once serves every test's workers: a fresh
        # interpreter per worker would pay the torch + timm import (seconds on a loaded machine) each
        # time, and forking the test process itself is unsafe once it has used OpenMP threads.
        context = torch.multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["openvision2.train.loop", "torch.distributed.fsdp"])
        torch.multiprocessing.start_processes(fn, args=(world_size, *args), nprocs=world_size, join=True,
                                              start_method="forkserver")
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
