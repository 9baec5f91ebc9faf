"""Choosing the autocast dtype. The released OpenVision 2 trains the image model in float32
(train.sh: dtype=float32, param_dtype=float32; bf16 activations were OpenVision 1's), so
precision=fp32 is the faithful setting; bf16 autocast is a deviation kept for speed where bf16
matmuls are fast. On CPUs without native bf16 matmuls (e.g. AVX2-only) it is tens of times slower
than fp32. "auto" decides from what the hardware *is* (a GPU's compute capability, the CPU's
AVX-512 BF16 / AMX flags as torch reports them), never from a timing: a timing differs between
processes on a busy machine, and so would the weights of two runs of the same command, or the halves
of a resumed run (issue 16). Parameters and both Adam moments stay float32 in every mode (the
release keeps Adam's first moment in bf16; see docs/DESIGN.md §4.4)."""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later)."""
    flags = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(flag is not None and flag() for flag in flags)


def auto_precision(device: torch.device) -> str:
    """What precision=auto means on this device: "bf16" or "fp32", from hardware flags only."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp32"  # Ampere and later compute in bf16 natively
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_precision_name(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32" for a requested precision ("auto", "bf16" or "fp32")."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return auto_precision(device) if precision == "auto" else precision


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    return DTYPES[resolve_precision_name(precision, device)]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
