"""Timing methods side by side, each in its own worker process (bench/worker.py), and the figures
that come of it: step time, peak memory, FLOPs, MFU and the ratios to OpenVision 2. Used by
`ov2 bench`, its --sweep, the GPU check and `ov2 compare`'s cost measurement.

Two ways to time several methods:
- interleaved (CPU): every worker is built first, then timed in rounds, each round running every
  method once in a rotated order, so that a slow spell of a shared machine lands on all alike;
- one at a time (GPU): each worker is built, warmed up, timed and closed before the next starts. A
  GPU is the job's alone (no slow spells to share), and two methods' working sets at a large batch
  need not fit on it together (OpenVision 2's 77 GiB and OpenVision 1's 112 GiB at L/14 @224,
  batch 256, by `ov2 plan`'s tracker, do not fit one H200).
"""

from __future__ import annotations

import statistics

from ..errors import UserError
from .runner import WorkerFailed, WorkerProcess, log


def device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    import os
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


def base_spec_of(args, device, precision: str, shape) -> dict:
    """The worker spec of `ov2 bench`'s options (bench/train_step.py) at one shape and precision."""
    return {"device": device.type, "precision": precision, "shape": shape.to_dict(), "warmup": args.warmup,
            "threads": args.threads, "activation_checkpointing": args.activation_checkpointing,
            "compile": args.compile, "ranks": getattr(args, "ranks", 1)}


def timed_rounds(methods: list[str], base_spec: dict, rounds: int, steps_per_round: int,
                 together: bool | None = None, deadline: float | None = None, flops: bool = True) -> tuple[dict, dict]:
    """(step times per method, worker report per method), every method in its own process: interleaved
    when `together` (default: on CPU), else one worker at a time (default on a GPU). A worker still busy
    at `deadline` (time.monotonic()) is stopped (runner.WorkerFailed)."""
    if together is None:
        together = base_spec["device"] == "cpu"
    if not together:
        times, reports = {}, {}
        for method in methods:
            one_times, one_reports = timed_rounds([method], base_spec, rounds, steps_per_round, True, deadline, flops)
            times |= one_times
            reports |= one_reports
        return times, reports
    workers: dict[str, WorkerProcess] = {}
    try:
        for method in methods:  # built one at a time, so no two compete for the cores while warming up
            log(f"building and warming up {method} ...")
            workers[method] = WorkerProcess({**base_spec, "method": method}, deadline)
        return interleave(workers, rounds, steps_per_round, flops)
    finally:
        for worker in workers.values():
            worker.close()


def interleave(workers: dict, rounds: int, steps_per_round: int, flops: bool = True) -> tuple[dict, dict]:
    """Timed rounds over started workers (each round in a rotated order), then each one's report."""
    names = list(workers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name] += workers[name].ask({"cmd": "steps", "n": steps_per_round})["times"]
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{name} {times[name][-1]:.3f}s" for name in names))
    return times, {name: workers[name].ask({"cmd": "report", "flops": flops}) for name in names}


def bench_methods(methods: list[str], base_spec: dict, rounds: int, steps_per_round: int, peak: float) -> dict:
    """{"methods": per-method figures, "ratios_vs_openvision2": ...} from timed rounds."""
    try:
        times, reports = timed_rounds(methods, base_spec, rounds, steps_per_round)
    except WorkerFailed as err:
        raise UserError(f"benchmark failed in {err} (try a smaller --batch or --model)") from None
    return method_figures(base_spec, times, reports, peak)


def method_figures(base_spec: dict, times: dict, reports: dict, peak: float) -> dict:
    """Per-method figures (median step, memory, MFU, counted and analytic FLOPs) and ratios to OV2."""
    from dataclasses import replace

    from ..methods import count_flops, get_method  # these import torch: not when `ov2 --help` builds the parser
    from ..models.config import ModelConfig
    from .methods import BenchShape

    shape = BenchShape(**base_spec["shape"])
    methods = list(times)
    results = {}
    for method in methods:
        step_s = statistics.median(times[method])
        rep = reports[method]
        fwd = rep["forward_flops_per_image"]
        images_per_s = shape.batch_size / step_s
        results[method] = {
            "step_s": step_s, "step_s_all": times[method], "images_per_s": images_per_s,
            "peak_mem_bytes": rep["peak_mem_bytes"], "memory_kind": rep["memory_kind"],
            "params": rep["params"], "gflops_per_image": fwd / 1e9,
            "mfu": 3 * fwd * images_per_s / (peak * 1e12),
            **{k: rep[k] for k in ("peak_rss_bytes", "baseline_rss_bytes", "param_bytes", "optimizer_state_bytes")
               if k in rep},
        }
        if method != "coca":  # the analytic count of `ov2 flops` for the same step (both OV1 texts)
            model_config = replace(ModelConfig.from_dict(shape.to_dict()), method=method)
            analytic = count_flops(model_config, get_method(method).train_text_passes)
            results[method]["gflops_per_image_analytic"] = analytic.total_flops / 1e9
    ref = results.get("openvision2")
    ratios = {}
    if ref:
        for method, r in results.items():
            ratios[method] = {"time": r["step_s"] / ref["step_s"], "memory": r["peak_mem_bytes"] / ref["peak_mem_bytes"],
                              "flops": r["gflops_per_image"] / ref["gflops_per_image"]}
    return {"methods": results, "ratios_vs_openvision2": ratios}
