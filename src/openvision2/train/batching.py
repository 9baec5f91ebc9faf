"""How a step's global batch is split: ranks x accumulation x micro-batch, the micro-batch being the
images one device takes in one forward pass.

- micro_batch=N fixes it; the accumulation is batch_size / (ranks x N).
- grad_accum=N (the setting before micro_batch existed) fixes it too: micro-batch = batch_size / (ranks x N).
  Both given must agree.
- Neither (micro_batch=auto, grad_accum=0, the defaults): on a CPU the rank's whole share in one
  forward (no accumulation, as before micro_batch existed); on a GPU the largest micro-batch that
  divides the rank's share and whose training step fits the device's memory by `ov2 plan`'s memory
  model (plan.fit_micro_batch), which also gives the expected peak the first log line prints.

A run records its micro-batch (config.json `resolved`) and a resume reuses it, so the sample order,
the token masks (seeded per global micro-batch) and the steps stay those of the uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .config import TrainConfig

GIB = 2**30


@dataclass(frozen=True)
class BatchSplit:
    micro_batch: int  # images per device per forward
    grad_accum: int  # micro-batches per step and rank
    peak_bytes: int | None = None  # the planner's expected peak per device, where it was asked

    def describe(self) -> str:
        peak = f", expected peak {self.peak_bytes / GIB:.1f} GiB per device" if self.peak_bytes else ""
        return f"micro-batch {self.micro_batch} x accumulation {self.grad_accum} per rank{peak}"


def rank_share(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise UserError(f"batch_size {batch_size} (the global batch) must be divisible by the {world_size} ranks")
    return batch_size // world_size


def requested_split(config: TrainConfig, world_size: int) -> int | None:
    """The micro-batch the config fixes (micro_batch=N, or grad_accum=N), checked; None when automatic."""
    par, batch = config.parallel, config.optim.batch_size
    share = rank_share(batch, world_size)
    micro = par.fixed_micro_batch()
    if par.grad_accum:
        if share % par.grad_accum:
            raise UserError(f"batch_size {batch} (the global batch) must be divisible by {world_size} ranks x "
                            f"grad_accum {par.grad_accum}")
        implied = share // par.grad_accum
        if micro is not None and micro != implied:
            raise UserError(f"micro_batch={micro} and grad_accum={par.grad_accum} contradict each other: "
                            f"batch_size {batch} over {world_size} ranks x {par.grad_accum} micro-batches is "
                            f"{implied} images each; set one of them")
        return implied
    if micro is not None and share % micro:
        raise UserError(f"batch_size {batch} over {world_size} ranks is {share} images per rank, which "
                        f"micro_batch={micro} does not divide: choose a divisor of {share}")
    return micro


def split_batch(config: TrainConfig, world_size: int, device_memory_gib: float | None = None,
                recorded: int | None = None) -> BatchSplit:
    """The step's split. device_memory_gib: the GPU's memory (None on a CPU), for micro_batch=auto;
    recorded: the micro-batch an earlier attempt of this run chose (reused)."""
    share = rank_share(config.optim.batch_size, world_size)
    micro = requested_split(config, world_size)
    if recorded is not None and micro is not None and micro != recorded:
        raise UserError(f"this run chose micro_batch={recorded} (recorded in its config.json), this command asks "
                        f"for {micro} images per device per forward: resume with micro_batch={recorded} "
                        f"(or auto, without grad_accum), or start a new run directory")
    if micro is None and recorded is not None:
        if share % recorded:
            raise UserError(f"this run chose micro_batch={recorded}, which does not divide the {share} images "
                            f"per rank of {world_size} ranks: resume on a number of ranks it divides")
        micro = recorded
    if device_memory_gib is None:  # a CPU: the whole share in one forward unless told otherwise
        return BatchSplit(micro or share, share // (micro or share))
    from ..plan import fit_micro_batch
    from ..plan.memory import measure

    if micro is None:
        micro, peak = fit_micro_batch(config, world_size, device_memory_gib)
    else:
        peak = measure(config, world_size, accumulate=share > micro, at=(micro,)).peak(micro)
    return BatchSplit(micro, share // micro, peak)


def device_memory_gib(device) -> float | None:
    """A GPU's memory, what micro_batch=auto fits into; None on a CPU (which keeps the whole share)."""
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / GIB
