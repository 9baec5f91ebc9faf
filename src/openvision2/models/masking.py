"""Visual-token masking between encoder and decoder (DESIGN.md §1.3).

The encoder always sees every patch; only its output tokens are subsampled before the decoder.
In training each example gets its own random subset. At evaluation (caption, zero-shot, held-out
loss) the decoder gets `eval_keep_ratio` of the tokens (see ModelConfig): with a ratio below 1, one
seeded random subset (positions and order) shared by every example, so a caption does not depend on
the batch an image comes in, and two runs give the same result.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError


def check_keep_ratio(keep_ratio: float) -> float:
    if not (0.0 < keep_ratio <= 1.0):
        raise UserError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return keep_ratio


EVAL_SEED = 0  # the evaluation subset: a fixed draw, so evaluations are reproducible


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


def keep_eval_tokens(tokens: torch.Tensor, keep_ratio: float, seed: int = EVAL_SEED) -> torch.Tensor:
    """[B, N, D] -> [B, floor(N*keep_ratio), D] for evaluation: the same seeded random subset, in
    its random order, for every example (all tokens, in spatial order, at keep_ratio 1)."""
    n = tokens.shape[1]
    k = num_kept(n, keep_ratio)
    if k == n and keep_ratio == 1.0:
        return tokens
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    return tokens[:, order.to(tokens.device)]
