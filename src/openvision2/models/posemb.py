"""Fixed 2-D sin-cos position embedding in the MoCo-v3 / big_vision ordering (DESIGN.md §1.2)."""

from __future__ import annotations

import torch


def sincos_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[grid_h * grid_w, dim] table; row index = row * grid_w + col.

    Each row is concat[sin(col*w), cos(col*w), sin(row*w), cos(row*w)] with
    w_k = 1 / temperature^(k / (dim/4 - 1)). This is not the MAE/open_clip ordering.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    x = cols.flatten()[:, None] * omega[None]
    y = rows.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def sincos_2d_with_cls(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """The table the encoder adds after prepending CLS: a zero row for CLS, then the patches."""
    return torch.cat([torch.zeros(1, dim), sincos_2d(grid_h, grid_w, dim)], dim=0)
