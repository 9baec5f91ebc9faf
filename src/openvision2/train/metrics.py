"""What a run reports: metrics.jsonl (one JSON object per line) and TensorBoard, from rank 0.

Throughput is global (all ranks); MFU = achieved training FLOP/s per device / the device's peak.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from ..hardware import known_peak_tflops

# The tensor-core format a precision's matmuls run in on a GPU: fp32 runs on TF32 (train/backend.py).
MATMUL_FORMAT = {"bf16": "bf16", "fp32": "tf32"}


def device_peak_tflops(device: torch.device, configured: float, precision: str = "bf16") -> float | None:
    """The configured figure if given; else a known GPU's peak (hardware.py) in the format the run's
    precision computes in (bf16, or TF32 for fp32); None where unknown (MFU omitted)."""
    return configured if configured > 0 else known_peak_tflops(device, MATMUL_FORMAT[precision])


def train_flops_per_sample(model_config) -> float:
    """Training FLOPs of one image-caption pair: 3 x the forward FLOPs of openvision2.flops (the
    DESIGN.md §5.4 counting that reproduces the paper's FLOPs/image), for the run's model (ModelConfig)."""
    from ..methods import count_flops, get_method

    return 3.0 * count_flops(model_config, get_method(model_config.method).train_text_passes).total_flops


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class MetricsLog:
    """Appends records to metrics.jsonl and, if asked, to TensorBoard (and W&B when WANDB_PROJECT is set
    and wandb is installed). Only rank 0 creates one."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, config: dict | None = None,
                 resumed_at: int | None = None):
        """resumed_at: the step a resume continues from; TensorBoard then drops the events the earlier
        session wrote for the steps after it (they are done again), as metrics.jsonl drops them."""
        self.file = (out_dir / "metrics.jsonl").open("a")
        self.tb = self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resumed_at is None else resumed_at + 1
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)
        import os

        if os.environ.get("WANDB_PROJECT"):
            try:
                import wandb

                self.wandb = wandb.init(project=os.environ["WANDB_PROJECT"], dir=str(out_dir), config=config,
                                        name=out_dir.name, resume="allow")
            except ImportError:
                pass

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class Window:
    """Accumulates steps between two log lines: samples, caption tokens, time waiting for data."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.samples, self.tokens, self.data_seconds = time.perf_counter(), 0, 0, 0, 0.0

    def add(self, samples: int, tokens: int, data_seconds: float) -> None:
        self.steps, self.samples = self.steps + 1, self.samples + samples
        self.tokens, self.data_seconds = self.tokens + tokens, self.data_seconds + data_seconds

    def summary(self, flops_per_sample: float, world_size: int, peak_tflops: float | None,
                device: torch.device) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {"images_per_s": self.samples / elapsed, "tokens_per_s": self.tokens / elapsed,
                  "data_wait": self.data_seconds / elapsed, "peak_mem_gib": peak_memory_gib(device)}
        if peak_tflops:
            record["mfu"] = flops_per_sample * self.samples / elapsed / world_size / (peak_tflops * 1e12)
        return record
