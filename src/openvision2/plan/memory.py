"""Per-device peak memory of a step as a function of the micro-batch, measured by the fake run where it
matters, and the largest micro-batch that fits a device.

A step's memory grows with the micro-batch almost, but not exactly, linearly: the loss's chunk buffers
fill up to 4,096 tokens (32 captions), and later parts grow a little faster than earlier ones. L/14 @84
with selective checkpointing: 63 MiB per sample between micro-batches 8 and 16, 55 between 33 and 66,
47-49 from 132 to 1,056. A line through 8 and 16 would put the largest micro-batch on an H100 ~25% too
low, so the fit is not extrapolated: a fake step costs the same seconds at any micro-batch, and the
micro-batches that decide something (the per-device batch, the largest that fits, the one chosen) are
measured. Between measured micro-batches the peak is interpolated linearly; the micro-batch a run
would choose is itself measured (and, if it does not fit after all, the next smaller one), so a choice's
expected peak is never an interpolation.

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
FIRST_MICRO_BATCHES = (8, 16)  # always measured: the slope that starts every search
SEARCH_PROBES = 6  # fake steps at most per capacity searched
SEARCH_TOLERANCE = 0.01  # a search ends when what fits and what does not are this close
LARGEST_TRIED = 1 << 20  # micro-batches beyond this are not tried (a step that hardly grows with them)
GIB = 2 ** 30


@dataclass(frozen=True)
class MemoryFit:
    """Per-device bytes of a step at the measured micro-batches (parts: parameters, gradients,
    optimizer, activations, inputs, total, and DDP's buckets), interpolated between them."""

    points: tuple  # ((micro-batch, parts), ...), ascending micro-batch
    checkpointing: str
    parallel: str
    world_size: int
    accumulate: bool  # fitted on a step of two micro-batches (grad_accum >= 2): gradients held between them

    def _segment(self, micro_batch: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """The two measured points around micro_batch (the end ones outside the measured range)."""
        xs = [(b, parts["total"]) for b, parts in self.points]
        i = next((i for i in range(1, len(xs) - 1) if micro_batch <= xs[i][0]), len(xs) - 1)
        return xs[i - 1], xs[i]

    def line(self, micro_batch: float) -> tuple[float, float]:
        """(fixed, per-sample) bytes of the linear piece at micro_batch."""
        (b1, t1), (b2, t2) = self._segment(micro_batch)
        per_sample = (t2 - t1) / (b2 - b1)
        return t1 - per_sample * b1, per_sample

    def peak(self, micro_batch: int) -> int:
        measured = self.measured(micro_batch)
        if measured is not None:
            return measured
        fixed, per_sample = self.line(micro_batch)
        return int(round(fixed + per_sample * micro_batch))

    def measured(self, micro_batch: int) -> int | None:
        return next((parts["total"] for b, parts in self.points if b == micro_batch), None)

    def parts(self, micro_batch: int) -> dict:
        """The measured breakdown nearest micro_batch (the fixed parts do not depend on it)."""
        return min(self.points, key=lambda point: abs(point[0] - micro_batch))[1]

    def largest(self, capacity_bytes: float) -> int:
        """The largest micro-batch whose peak is within capacity_bytes (0: not even one sample): below the
        first measured one that does not fit, at or above the last measured one that does."""
        over = min((b for b, parts in self.points if parts["total"] > capacity_bytes), default=None)
        low = max((b for b, parts in self.points if parts["total"] <= capacity_bytes and (over is None or b < over)),
                  default=0)
        if over is not None and over - low <= 1:
            return low
        fixed, per_sample = self.line(low + 0.5)
        if per_sample <= 0:
            return low if over is not None else LARGEST_TRIED
        estimate = math.floor((capacity_bytes - fixed) / per_sample)
        return max(low, min(estimate, over - 1 if over is not None else LARGEST_TRIED))

    @property
    def fixed(self) -> float:
        return self.line(self.points[-1][0])[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryFit":
        return cls(**{**data, "points": tuple((b, parts) for b, parts in data["points"])})


def measure(config: TrainConfig, world_size: int, checkpointing: str | None = None, accumulate: bool = False,
            capacities: tuple[float, ...] = (), at: tuple[int, ...] = (), divisor_of: int = 0,
            own_process: bool = False) -> MemoryFit:
    """The config's step at this world size (its own checkpointing unless one is given; accumulate:
    with grad_accum >= 2), measured by the fake run at 8 and 16 samples, at each micro-batch in `at`,
    around the largest micro-batch within each of `capacities` (bytes), and, with divisor_of, at the
    largest micro-batch that fits capacities[0] and divides divisor_of (at most half of it when
    accumulating), which is what a run would choose. own_process: in a fresh process (so that
    several can run at once; also where this process cannot host the fake run)."""
    request = {"world_size": world_size, "checkpointing": checkpointing or config.parallel.activation_checkpointing,
               "accumulate": accumulate, "capacities": list(capacities), "at": list(at), "divisor_of": divisor_of}
    parallel = resolve_parallel(config.parallel.strategy, world_size)
    if own_process or _needs_child(parallel):
        return _measure_in_child(config, request)
    return measure_here(config, **request)


def measure_here(config: TrainConfig, world_size: int, checkpointing: str, accumulate: bool, capacities,
                 at, divisor_of: int) -> MemoryFit:
    """measure() in this process."""
    from .fake import fake_steps

    parallel = resolve_parallel(config.parallel.strategy, world_size)
    measured: dict[int, dict] = {}
    with fake_steps(config, world_size, checkpointing, accumulate) as step:

        def probe(micro_batch: int) -> None:
            if micro_batch > 0 and micro_batch not in measured:
                parts = asdict(step(micro_batch))
                # DDP's buckets: one fp32 copy of the (unsharded, fp32) parameters' gradients
                parts["ddp_buckets"] = parts["parameters"] if parallel == "ddp" else 0
                parts["total"] += parts["ddp_buckets"]
                measured[micro_batch] = parts

        def fit() -> MemoryFit:
            return MemoryFit(tuple(sorted(measured.items())), checkpointing, parallel, world_size, accumulate)

        for micro_batch in (*FIRST_MICRO_BATCHES, *at):
            probe(micro_batch)
        for capacity in capacities:
            _search(probe, fit, capacity)
        if divisor_of and capacities:
            limit = divisor_of // 2 if accumulate else divisor_of
            micro = micro_batch_for(divisor_of, min(fit().largest(capacities[0]), limit))
            while micro:  # interpolation may have promised too much: the next divisor down, measured
                probe(micro)
                if measured[micro]["total"] <= capacities[0]:
                    break
                micro = micro_batch_for(divisor_of, micro - 1)
        return fit()


def _search(probe, fit, capacity: float) -> None:
    """Measure around the largest micro-batch within capacity: each probe at the current estimate
    (interpolated, or extrapolated from the last piece), until the estimate is measured already, or
    is within SEARCH_TOLERANCE of a measured micro-batch that does not fit."""
    if fit().measured(FIRST_MICRO_BATCHES[0]) > capacity:
        probe(1)
    for _ in range(SEARCH_PROBES):
        current = fit()
        guess = current.largest(capacity)
        if guess == 0 or guess >= LARGEST_TRIED or current.measured(guess) is not None:
            return
        probe(guess)
        over = [b for b, parts in current.points if parts["total"] > capacity and b > guess]
        if over and min(over) - guess <= max(1, SEARCH_TOLERANCE * guess):
            return


def _needs_child(parallel: str) -> bool:
    """A fresh process hosts the fake run where this one cannot host the fake process group (it already
    has a process group, as a torchrun worker does) or would shard onto a GPU."""
    import torch
    import torch.distributed as dist

    return parallel == "fsdp" and ((dist.is_available() and dist.is_initialized()) or torch.cuda.is_available())


def _measure_in_child(config: TrainConfig, request: dict) -> MemoryFit:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "openvision2.plan.child"], input=json.dumps(
        {"config": config.to_dict(), **request}), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the planning process failed: {done.stderr.strip().splitlines()[-1:]}")
    return MemoryFit.from_dict(json.loads(done.stdout))


@dataclass(frozen=True)
class Choice:
    """How a step runs on each device: micro_batch x grad_accum = the per-device batch."""

    micro_batch: int
    grad_accum: int
    peak_bytes: int
    fit: MemoryFit


def choose(config: TrainConfig, world_size: int, capacity_bytes: float, checkpointing: str | None = None,
           own_process: bool = False) -> Choice:
    """The largest micro-batch that divides the per-device batch and fits capacity_bytes (the whole
    per-device batch in one pass when it fits, else with accumulation); micro_batch 0 when not even
    1 fits (peak_bytes is then micro-batch 1's). Every figure is of a measured micro-batch."""
    per_device = split_per_device(config.optim.batch_size, world_size)
    single = measure(config, world_size, checkpointing, capacities=(capacity_bytes,), at=(per_device,),
                     own_process=own_process)
    if single.peak(per_device) <= capacity_bytes:
        return Choice(per_device, 1, single.peak(per_device), single)
    accumulating = measure(config, world_size, checkpointing, accumulate=True, capacities=(capacity_bytes,),
                           divisor_of=per_device, own_process=own_process)
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
