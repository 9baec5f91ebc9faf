"""The backend settings a training run uses on its device, decided in one place (backend_for) and
applied by the loop: what a GPU needs for speed and a CPU does not have.

- TF32: on CUDA, float32 matmuls and convolutions run on TF32 tensor cores (10-bit mantissa, fp32
  range and accumulation). Without it precision=fp32 (the release's setting) runs plain FP32 GEMMs,
  several times slower; MFU is then measured against the TF32 peak (train/metrics.py).
- Fused AdamW: one kernel per step for all parameters instead of several foreach launches.
- Pinned batches: page-locked host memory makes the host-to-device copies asynchronous
  (non_blocking=True does nothing on pageable memory, and each copy then waits for the GPU).
A CPU gets none of them: it runs as it always has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Backend:
    tf32: bool
    fused_adamw: bool
    pin_memory: bool


def backend_for(device: torch.device) -> Backend:
    cuda = device.type == "cuda"
    return Backend(tf32=cuda, fused_adamw=cuda, pin_memory=cuda)


def apply_backend(backend: Backend) -> None:
    """Process-wide switches (the fused optimizer and pinning are passed where they are used)."""
    if backend.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # and for convolutions (the patch embedding)


def to_device(batch: dict, device: torch.device, pin: bool) -> dict:
    """The batch's tensors on the device, copied asynchronously from pinned memory where asked."""
    return {k: ((v.pin_memory() if pin else v).to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}
