"""Choosing the autocast dtype. The released OpenVision 2 trains the image model in float32
(train.sh: dtype=float32, param_dtype=float32; bf16 activations were OpenVision 1's), so
precision=fp32 is the faithful setting. bf16 autocast is a deviation kept for speed where bf16
matmuls are fast (GPUs, CPUs with native bf16); on CPUs without them (e.g. AVX2-only) it is tens of
times slower than fp32, so "auto" measures before choosing. Parameters and both Adam moments stay
float32 in every mode (the release keeps Adam's first moment in bf16; see docs/DESIGN.md §4.4)."""

from __future__ import annotations

import contextlib
import time

import torch

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")


def _matmul_seconds(dtype: torch.dtype) -> float:
    a = torch.randn(256, 256, dtype=dtype)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    return time.perf_counter() - start


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _matmul_seconds(torch.bfloat16) < _matmul_seconds(torch.float32) else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
