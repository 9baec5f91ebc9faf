"""The plan of one training stage on a cluster: memory per device broken down, whether it fits, the
largest micro-batch per checkpointing mode, and step time, GPU-hours, days and cost.

Time: a step's FLOPs are 3 x the forward FLOPs of `ov2 flops` (flops.py, a training step's texts) per
sample, plus one more forward with full activation checkpointing (selective recomputes no matmul);
they run at `mfu` of the device's dense peak in the run's precision (bf16, or tf32 for fp32). The MFU is
an assumption the user states (--mfu); nothing here measures it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import UserError
from ..methods import count_flops, get_method
from ..train.config import TrainConfig
from ..train.parallel import ACTIVATION_CHECKPOINTING, resolve_parallel
from . import analytic
from .fake import loss_bytes, model_config, plan_precision
from .memory import GIB, USABLE, Choice, choose, measure, no_fit_message, split_per_device

DEFAULT_MFU = 0.40


@dataclass(frozen=True)
class Device:
    kind: str  # a table entry's name, or "custom"
    memory_gib: float
    peak_tflops: float | None  # dense, in the run's precision; None: no timing


def choose_per_mode(config: TrainConfig, gpus: int, capacity: float, modes: list[str]) -> dict:
    """choose() for each checkpointing mode; with more than one core, the modes at once, each in a
    process of its own (a fake step is one busy Python thread: the modes share nothing)."""
    jobs = min(len(modes), os.cpu_count() or 1)
    if jobs < 2:
        return {mode: choose(config, gpus, capacity, mode) for mode in modes}
    with ThreadPoolExecutor(jobs) as pool:
        futures = {mode: pool.submit(choose, config, gpus, capacity, mode, True) for mode in modes}
        return {mode: future.result() for mode, future in futures.items()}


def given_micro_batch(config: TrainConfig, per_device: int) -> int | None:
    """The micro-batch the config fixes (micro_batch=N, or grad_accum=A), None for micro_batch=auto."""
    par = config.parallel
    fixed = getattr(par, "fixed_micro_batch", lambda: None)()
    if fixed:
        return fixed
    if par.grad_accum > 0 and per_device % par.grad_accum == 0:
        return per_device // par.grad_accum
    return None


def plan_stage(config: TrainConfig, gpus: int, device: Device, mfu: float = DEFAULT_MFU,
               price_per_gpu_hour: float | None = None, explain: bool = False, modes=ACTIVATION_CHECKPOINTING,
               adam_first_moment_bf16: bool = False, checkpointing: str | None = None) -> dict:
    """The plan of one stage (see the module's doc); checkpointing overrides the config's (e.g. the
    plan-only "encoder-full"); adam_first_moment_bf16: the release's bf16 first moment."""
    per_device = split_per_device(config.optim.batch_size, gpus)
    capacity = USABLE * device.memory_gib * GIB
    own_mode = checkpointing or config.parallel.activation_checkpointing
    # the tracked run holds both AdamW moments in fp32: with the release's bf16 first moment, the
    # tracked peak may exceed the capacity by what that saves (the same in every mode and micro-batch)
    saving = _first_moment_saving(config, gpus) if adam_first_moment_bf16 else 0.0
    choices = choose_per_mode(config, gpus, capacity + saving, list(dict.fromkeys([own_mode, *modes])))
    own = choices[own_mode]
    if not any(c.micro_batch for c in choices.values()):
        raise UserError(no_fit_message(config, device.memory_gib, own, every_mode=True))
    given = given_micro_batch(config, per_device)
    if given:  # the config fixes the micro-batch: plan that one
        fit = own.fit
        if (given < per_device) != fit.accumulate or fit.measured(given) is None:
            fit = measure(config, gpus, own_mode, given < per_device, at=(given,))
        own = Choice(given, per_device // given, fit.peak(given), fit)
    shown = own if own.micro_batch else Choice(1, per_device, own.peak_bytes, own.fit)
    out = {
        "method": config.model.method, "encoder": config.model.encoder, "decoder": config.model.decoder,
        "image_size": config.model.image_size, "batch_size": config.optim.batch_size, "steps": config.optim.steps,
        "gpus": gpus, "gpu": device.kind, "device_memory_gib": device.memory_gib,
        "usable_gib": capacity / GIB, "usable_fraction": USABLE,
        "parallel": own.fit.parallel, "precision": plan_precision(config.parallel.precision),
        "activation_checkpointing": own_mode, "per_device_batch": per_device,
        "micro_batch": shown.micro_batch, "grad_accum": shown.grad_accum,
        "peak_gib": (shown.peak_bytes - saving) / GIB,
        "fits": bool(own.micro_batch) and shown.peak_bytes - saving <= capacity,
        "breakdown_gib": breakdown(config, shown, device, saving),
        "fit": _fit_json(shown.fit, shown.micro_batch, saving),
        "largest_micro_batch": {mode: _mode_plan(c, capacity, saving) for mode, c in choices.items() if mode in modes},
    }
    out["time"] = timing(config, per_device, own_mode, device, mfu, gpus, price_per_gpu_hour)
    if explain:
        out["explain"] = cross_check(config, shown, gpus)
    return out


def _mode_plan(choice: Choice, capacity: float, saving: float) -> dict:
    """One checkpointing mode: its choice for this stage, the largest micro-batch that fits (in one pass,
    or with accumulation when the stage needs it), the memory curve's piece there and its measured points."""
    largest = choice.fit.largest(capacity + saving)
    return {"micro_batch": choice.micro_batch, "grad_accum": choice.grad_accum,
            "peak_gib": (choice.peak_bytes - saving) / GIB, "largest_fitting": largest,
            **_fit_json(choice.fit, largest, saving)}


def _fit_json(fit, micro_batch: int, saving: float) -> dict:
    """The linear piece of the memory curve at micro_batch (fixed GiB + MiB per sample) and the measured points."""
    fixed, per_sample = fit.line(max(micro_batch, 1))
    return {"fixed_gib": (fixed - saving) / GIB, "per_sample_mib": per_sample / 2 ** 20, "accumulating": fit.accumulate,
            "measured": [[b, (parts["total"] - saving) / GIB] for b, parts in fit.points]}


def _first_moment_saving(config: TrainConfig, gpus: int) -> float:
    """Bytes per device that Adam's first moment in bf16 instead of fp32 saves (the release's mu_dtype):
    2 a parameter (sharded over the GPUs under FSDP), a quarter of the tracked AdamW state."""
    params = count_flops(model_config(config)).total_params
    return 2 * params / (gpus if resolve_parallel(config.parallel.strategy, gpus) == "fsdp" else 1)


def breakdown(config: TrainConfig, choice: Choice, device: Device, saving: float) -> dict:
    """GiB per device at the chosen micro-batch: parameters, gradients, optimizer state, activations
    (what the step keeps for backward and its temporaries, the loss apart), loss temporaries, inputs,
    DDP buckets, and the allowance (the share of the device no tracker sees)."""
    parts = choice.fit.parts(choice.micro_batch)
    fixed = {k: parts.get(k, 0) for k in ("parameters", "gradients", "optimizer", "inputs", "ddp_buckets")}
    fixed["optimizer"] -= saving
    loss = loss_bytes(config, choice.micro_batch)
    activations = max(0.0, choice.peak_bytes - saving - sum(fixed.values()) - loss)
    out = {k: v / GIB for k, v in fixed.items() if v or k != "ddp_buckets"}
    out.update(activations=activations / GIB, loss_temporaries=loss / GIB,
               allowance=(1 - USABLE) * device.memory_gib)
    return out


def train_flops_per_sample(config: TrainConfig, checkpointing: str) -> float:
    """3 x forward (a training step's texts), plus the forward again of what full checkpointing recomputes."""
    model = model_config(config)
    counted = count_flops(model, max(1, get_method(model.method).train_text_passes))
    recomputed = {"full": counted.total_flops, "encoder-full": counted.flops["encoder"]}.get(checkpointing, 0)
    return 3 * counted.total_flops + recomputed


def timing(config: TrainConfig, per_device: int, checkpointing: str, device: Device, mfu: float, gpus: int,
           price: float | None) -> dict:
    flops = train_flops_per_sample(config, checkpointing)
    out = {"gflops_per_sample": flops / 1e9, "mfu": mfu, "peak_tflops": device.peak_tflops}
    if not device.peak_tflops:
        return out
    step_s = per_device * flops / (device.peak_tflops * 1e12 * mfu)
    hours = config.optim.steps * step_s / 3600
    out.update(step_s=step_s, images_per_s_per_device=per_device / step_s, images_per_s=gpus * per_device / step_s,
               hours=hours, days=hours / 24, gpu_hours=hours * gpus)
    if price is not None:
        out.update(price_per_gpu_hour=price, cost=hours * gpus * price)
    return out


def cross_check(config: TrainConfig, choice: Choice, gpus: int) -> dict:
    """The analytic figures beside the fake run's (plan/analytic.py), with the differences."""
    model = model_config(config)
    element = 2 if plan_precision(config.parallel.precision) == "bf16" else 4
    per_sample = analytic.activation_bytes_per_sample(model, choice.fit.checkpointing, element)
    params = count_flops(model).total_params
    state = analytic.state_bytes(params, gpus, choice.fit.parallel == "fsdp")
    tracked_state = sum(choice.fit.parts(choice.micro_batch).get(k, 0) for k in ("parameters", "gradients", "optimizer"))
    per_sample_tracked = choice.fit.line(max(choice.micro_batch, 1))[1]
    analytic_sample = sum(per_sample.values())
    return {
        "activation_mib_per_sample": {"analytic": analytic_sample / 2 ** 20, "tracked": per_sample_tracked / 2 ** 20,
                                      "difference": per_sample_tracked / max(analytic_sample, 1) - 1,
                                      "per_stack": {k: v / 2 ** 20 for k, v in per_sample.items()}},
        "state_gib": {"analytic": sum(state.values()) / GIB, "tracked": tracked_state / GIB,
                      "difference": tracked_state / max(sum(state.values()), 1) - 1,
                      "parts": {k: v / GIB for k, v in state.items()}},
        "note": ("analytic state: fp32 parameters + fp32 gradients + two fp32 AdamW moments"
                 + (" sharded over the GPUs" if choice.fit.parallel == "fsdp" else "")
                 + "; tracked state at the peak, where gradients may not yet exist and FSDP holds unsharded "
                   "bf16 copies of the blocks in use; activations per block as plan/analytic.py"),
    }
