"""The FLOP/s peak that MFU is measured against: a device's published dense peak where it is known,
else the best rate a large matmul reaches on this machine (the "matmul probe")."""

from __future__ import annotations

import time

import torch

from ..hardware import KNOWN_PEAKS_TFLOPS, known_peak_tflops

__all__ = ["KNOWN_PEAKS_TFLOPS", "known_peak_tflops", "matmul_probe_tflops"]


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
    return best / 1e12
