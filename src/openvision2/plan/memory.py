"""Per-device peak memory as fixed + per-sample bytes, fitted from the fake run at two micro-batches, and
the largest micro-batch that fits a device.

A step's memory is affine in the micro-batch once the loss's chunk buffers are full (logits_chunk
tokens; 512 tokens = 5 captions of 127 positions): weights, gradients and AdamW's state do not depend on
it, activations grow with it. The fit uses micro-batches 8 and 16.

What no tracker sees (the CUDA context, cuBLAS / NCCL workspaces, the caching allocator's
fragmentation) is a stated allowance: a step fits when its tracked peak is at most USABLE of the
device's memory (public timm training benchmarks on a 24 GB GPU are consistent with ~0.88).

DDP (parallel=ddp) keeps its gradient buckets beside the gradients (one more fp32 copy of them);
the fake run does not wrap DDP, which needs a real process group, so its buckets are added here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from ..errors import UserError
from ..train.config import TrainConfig
from ..train.parallel import resolve_parallel

USABLE = 0.88  # of device memory; the other 0.12 is the allowance for what no tracker sees
FIT_MICRO_BATCHES = (8, 16)
GIB = 2 ** 30


@dataclass(frozen=True)
class MemoryFit:
    """Per-device bytes of a step at micro-batch b: fixed + per_sample * b, with the parts (parameters,
    gradients, optimizer, activations, inputs, and DDP's buckets) at the larger fitted micro-batch."""

    fixed: float
    per_sample: float
    checkpointing: str
    parallel: str
    world_size: int
    accumulate: bool  # fitted on a step of two micro-batches (grad_accum >= 2): gradients held between them
    parts: dict
    fitted: tuple  # the (micro-batch, tracked bytes) pairs the line goes through

    def peak(self, micro_batch: int) -> int:
        return int(round(self.fixed + self.per_sample * micro_batch))

    def largest(self, capacity_bytes: float) -> int:
        """The largest micro-batch whose peak is within capacity_bytes (0: not even one sample)."""
        if self.per_sample <= 0:
            return 0 if self.fixed > capacity_bytes else sys.maxsize
        return max(0, math.floor((capacity_bytes - self.fixed) / self.per_sample))


def measure(config: TrainConfig, world_size: int, checkpointing: str | None = None,
            accumulate: bool = False) -> MemoryFit:
    """The fixed + per-sample fit of the config's step at this world size (its own checkpointing
    unless one is given; accumulate: with grad_accum >= 2), from the fake run."""
    parallel = resolve_parallel(config.parallel.strategy, world_size)
    checkpointing = checkpointing or config.parallel.activation_checkpointing
    low, high = _tracked(config, world_size, checkpointing, parallel, accumulate)
    (b1, b2) = FIT_MICRO_BATCHES
    # DDP's buckets: one fp32 copy of the (unsharded, fp32) parameters' gradients, allocated at wrapping
    buckets = high["parameters"] if parallel == "ddp" else 0
    per_sample = (high["total"] - low["total"]) / (b2 - b1)
    fixed = low["total"] - per_sample * b1 + buckets
    parts = {k: v for k, v in high.items() if k != "total"}
    if buckets:
        parts["ddp_buckets"] = buckets
    return MemoryFit(fixed, per_sample, checkpointing, parallel, world_size, accumulate, parts,
                     ((b1, low["total"] + buckets), (b2, high["total"] + buckets)))


def _tracked(config: TrainConfig, world_size: int, checkpointing: str, parallel: str, accumulate: bool) -> list[dict]:
    """The fake run here, or in a child process where this one cannot host the fake process group
    (it already has a process group, as a torchrun worker does) or would shard onto a GPU."""
    import torch
    import torch.distributed as dist

    if parallel != "fsdp" or not ((dist.is_available() and dist.is_initialized()) or torch.cuda.is_available()):
        from .fake import tracked_steps

        return [asdict(t) for t in tracked_steps(config, world_size, FIT_MICRO_BATCHES, checkpointing, accumulate)]
    request = json.dumps({"config": config.to_dict(), "world_size": world_size, "checkpointing": checkpointing,
                          "accumulate": accumulate})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "openvision2.plan.child"], input=request, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the planning process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class Choice:
    """How a step runs on each device: micro_batch x grad_accum = the per-device batch."""

    micro_batch: int
    grad_accum: int
    peak_bytes: int
    fit: MemoryFit


def choose(config: TrainConfig, world_size: int, capacity_bytes: float, checkpointing: str | None = None) -> Choice:
    """The largest micro-batch that divides the per-device batch and fits capacity_bytes (the whole
    per-device batch in one pass when it fits, else with accumulation); micro_batch 0 when not even
    1 fits (peak_bytes is then micro-batch 1's)."""
    per_device = split_per_device(config.optim.batch_size, world_size)
    single = measure(config, world_size, checkpointing)
    if single.peak(per_device) <= capacity_bytes:
        return Choice(per_device, 1, single.peak(per_device), single)
    accumulating = measure(config, world_size, checkpointing, accumulate=True)
    micro = micro_batch_for(per_device, min(accumulating.largest(capacity_bytes), per_device // 2))
    if micro == 0:
        return Choice(0, 0, accumulating.peak(1), accumulating)
    return Choice(micro, per_device // micro, accumulating.peak(micro), accumulating)


def split_per_device(batch_size: int, world_size: int) -> int:
    """Samples per device and step; the global batch must split evenly over the devices."""
    if world_size < 1:
        raise UserError(f"the number of GPUs must be at least 1, got {world_size}")
    if batch_size % world_size:
        near = [n for n in (world_size - 1, world_size + 1) if n > 0 and batch_size % n == 0]
        raise UserError(f"batch_size {batch_size} cannot be split over {world_size} GPUs: use a batch divisible by "
                        f"{world_size}" + (f" (or {near[0]} GPUs)" if near else ""))
    return batch_size // world_size


def micro_batch_for(per_device: int, largest: int) -> int:
    """The largest micro-batch <= largest that divides the per-device batch (0 if even 1 does not fit)."""
    return next((m for m in range(min(per_device, largest), 0, -1) if per_device % m == 0), 0)


def fit_micro_batch(config: TrainConfig, world_size: int, device_memory_gib: float) -> tuple[int, int]:
    """(micro-batch, predicted peak bytes per device): the largest per-device micro-batch that divides
    the per-device batch (so grad_accum = per-device batch / micro-batch) and whose tracked peak is
    within USABLE of device_memory_gib, for the config's own parallel strategy, checkpointing and
    precision (auto = bf16). A UserError when the batch does not split or not even one sample fits."""
    if device_memory_gib <= 0:
        raise UserError(f"device memory must be positive, got {device_memory_gib} GiB")
    choice = choose(config, world_size, USABLE * device_memory_gib * GIB)
    if choice.micro_batch == 0:
        raise UserError(no_fit_message(config, device_memory_gib, choice))
    return choice.micro_batch, choice.peak_bytes


def no_fit_message(config: TrainConfig, device_memory_gib: float, choice: Choice, every_mode: bool = False) -> str:
    """What would make a config that fits at no micro-batch fit (every_mode: no checkpointing mode fits)."""
    fit, one = choice.fit, choice.peak_bytes
    capacity = USABLE * device_memory_gib * GIB
    hints = []
    if fit.parallel != "fsdp":
        hints.append("parallel=fsdp (shards weights, gradients and AdamW state over the GPUs)")
    elif fit.fixed > 0.5 * capacity:
        hints.append("more GPUs (FSDP shards the fixed part over them)")
    if fit.checkpointing != "full" and not every_mode:
        hints.append("activation_checkpointing=full")
    hints.append("a GPU with more memory")
    modes = "with any activation checkpointing" if every_mode else f"with activation checkpointing {fit.checkpointing}"
    return (f"{config.model.method} {config.model.encoder} @ {config.model.image_size}px does not fit "
            f"{device_memory_gib:g} GiB per GPU even at micro-batch 1 {modes} ({human_bytes(one)} tracked > "
            f"{human_bytes(capacity)} usable, {USABLE:.0%} of the device): try " + ", or ".join(hints))


def human_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.1f} MiB"
