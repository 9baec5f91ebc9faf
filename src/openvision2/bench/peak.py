"""The FLOP/s peak that MFU is measured against: a device's published dense peak where it is known,
else the best rate a large matmul reaches on this machine (the "matmul probe")."""

from __future__ import annotations

import time

import torch

from ..hardware import KNOWN_PEAKS_TFLOPS, known_peak_tflops
from .runner import log

__all__ = ["KNOWN_PEAKS_TFLOPS", "known_peak_tflops", "matmul_probe_tflops", "measure_peak_tflops"]


def measure_peak_tflops(device, precision: str, given: float | None = None) -> tuple[float, str]:
    """(peak TFLOP/s for MFU, where it comes from), for the precision the steps actually run in."""
    if given:
        return given, "given with --peak-tflops"
    if (known := known_peak_tflops(device, precision)) is not None:
        return known, f"published dense {precision} peak of {torch.cuda.get_device_name(device)}"
    log(f"probing the {precision} matmul peak ...")
    return matmul_probe_tflops(device, precision), f"best {precision} matmul rate measured here"


def matmul_probe_tflops(device: torch.device, precision: str, seconds: float = 2.0) -> float:
    """Best observed rate of square matmuls in the benchmark's precision (fp32 on CPU as a rule)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    a @ b  # warm-up
    while time.perf_counter() < deadline or best == 0.0:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    del a, b
    if device.type == "cuda":  # the caller's process must not keep the probe's blocks while workers run
        torch.cuda.empty_cache()
    return best / 1e12
