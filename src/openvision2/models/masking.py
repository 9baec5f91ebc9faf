"""Visual-token masking between encoder and decoder (SPEC §1.3).

The encoder always sees every patch; only its output tokens are subsampled before the decoder.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError


def check_keep_ratio(keep_ratio: float) -> float:
    if not (0.0 < keep_ratio <= 1.0):
        raise UserError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return keep_ratio


def num_kept(num_tokens: int, keep_ratio: float) -> int:
    """floor(N * keep_ratio) as the released code computes it, but at least one token."""
    return max(1, math.floor(num_tokens * check_keep_ratio(keep_ratio)))


def keep_random_tokens(tokens: torch.Tensor, keep_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, N, D] -> [B, floor(N*keep_ratio), D]: per example, a uniform random subset drawn without
    replacement, kept in its random order (not re-sorted spatially), as the released code does."""
    batch, n, dim = tokens.shape
    k = num_kept(n, keep_ratio)
    if k == n and keep_ratio == 1.0:
        return tokens  # CapPa-style ablation: nothing dropped, spatial order kept
    noise = torch.rand(batch, n, device=tokens.device, generator=generator)
    order = noise.argsort(dim=1)[:, :k]  # a random permutation's prefix: random subset, random order
    return tokens.gather(1, order[:, :, None].expand(-1, -1, dim))
