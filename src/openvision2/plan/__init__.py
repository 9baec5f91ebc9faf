"""`ov2 plan`: per-device memory, the micro-batch that fits, step time and cost of a training config on any
GPU cluster, from a fake run of the real training step on this machine's CPU (plan/fake.py).

fit_micro_batch is what `micro_batch=auto` in training calls."""

from .memory import USABLE, fit_micro_batch

__all__ = ["USABLE", "fit_micro_batch"]
