"""The CLIP contrastive loss of OpenVision 1 (DESIGN.md §6), against features gathered from all ranks.

Each rank scores its local images against every rank's texts (and its local texts against every
rank's images), the "local loss" of open_clip and of the release's shard_map + all_gather. The
gather keeps autograd, so each rank's gradient reaches the features of the other ranks. Without an
initialised process group everything is local and the loss is plain CLIP on the local batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """[B, D] on each rank -> [world * B, D], rank-major; the identity when there is one process."""
    _, world = _world()
    if world == 1:
        return features
    from torch.distributed.nn.functional import all_gather  # the autograd-aware all_gather

    return torch.cat(all_gather(features), dim=0)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """1/2 (CE image->text + CE text->image) for L2-normalised [B, D] embeddings of matching pairs."""
    rank, _ = _world()
    all_images, all_texts = gather_with_grad(image_emb), gather_with_grad(text_emb)
    labels = torch.arange(len(image_emb), device=image_emb.device) + rank * len(image_emb)
    per_image = logit_scale * image_emb.float() @ all_texts.float().T
    per_text = logit_scale * text_emb.float() @ all_images.float().T
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
