"""Greedy captioning from an OpenVision 2 model (the decoder sees all visual tokens at inference)."""

from __future__ import annotations

import torch

from .models import OpenVision2
from .preprocess import normalize
from .tokenizer import CaptionTokenizer


@torch.no_grad()
def greedy_caption(model: OpenVision2, tokenizer: CaptionTokenizer, images: torch.Tensor,
                   max_new_tokens: int | None = None) -> list[str]:
    """uint8 images [B, 3, H, W] -> one caption each, decoding the argmax token until [eos]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    visual = model.visual_prefix(normalize(images.to(device)))
    max_new_tokens = max_new_tokens or model.config.text_len - 2
    ids = torch.full((images.shape[0], 1), tokenizer.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(images.shape[0], dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        next_id = model.decoder(visual, ids)[:, -1].argmax(dim=-1)
        next_id = torch.where(finished, torch.full_like(next_id, tokenizer.pad_id), next_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        finished |= next_id == tokenizer.eos_id
        if finished.all():
            break
    model.train(was_training)
    return [tokenizer.decode(row[1:]) for row in ids.cpu()]
