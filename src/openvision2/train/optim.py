"""AdamW as the release configures it (DESIGN.md §4.4) and the warmup + cosine schedule (DESIGN.md §4.5)."""

from __future__ import annotations

import math

import torch
from torch import nn


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """Weight decay goes to kernels only: the weights of Linear and Conv layers (the patch conv and
    the vocabulary head included). Not to biases, LayerNorms, the token embedding, CLS or positions."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            names.add(f"{module_name}.weight" if module_name else "weight")
    return names


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, fused: bool = False) -> torch.optim.AdamW:
    """fused: one kernel for the whole update (train/backend.py asks for it on CUDA)."""
    decayed = decayed_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decayed], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0},
    ]
    # torch's AdamW multiplies the decay by the scheduled LR, as the release does.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear from 0 over warmup_steps, then cosine to 0 at total_steps."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
