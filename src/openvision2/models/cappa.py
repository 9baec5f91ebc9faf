"""The CapPa-style ablation (DESIGN.md §5.3, §10.1): OpenVision 2 with every visual token kept
(keep_ratio 1), optionally with CapPa's parallel prediction.

Parallel prediction: per example, with probability parallel_prob, every decoder input is replaced
by a [MASK] id and the text positions attend to all text positions (no causal mask among text), so
the whole caption is predicted at once from the image; the other examples are teacher-forced as
usual. Visual tokens keep the decoder's configured mask. Identical [MASK] inputs with full attention
would give identical outputs at every position, so parallel prediction needs text positions
(text_pos="learned"), as CapPa's decoder has.

The rest is OpenVision 2's: the concat decoder rather than CapPa's cross-attention decoder, and the
token-mean loss rather than CapPa's per-sequence mean, so that the ablation changes one thing.
A CapPa checkpoint records method cappa; its weights are an OpenVision 2 model's (only training differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import with_default
from .config import ModelConfig
from .decoder import attention_mask
from .losses import caption_nll, caption_targets
from .openvision2 import OpenVision2


@dataclass
class CapPaConfig(ModelConfig):
    """ModelConfig with CapPa's defaults: method cappa, every visual token kept. parallel_prob is
    CapPa's masked_pred_prob (0.75 in its reference config); mask_id 103 is [MASK] in OpenVision's
    WordPiece vocabulary."""

    method: str = with_default(ModelConfig, "method", "cappa")
    keep_ratio: float = with_default(ModelConfig, "keep_ratio", 1.0)


def parallel_attention_mask(num_visual: int, num_text: int, kind: str, parallel: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool: the decoder's mask, with full text-to-text attention where parallel[b]."""
    causal = attention_mask(num_visual, num_text, kind, device=parallel.device)
    full = causal.clone()
    full[num_visual:, num_visual:] = True
    return torch.where(parallel[:, None, None, None], full, causal)


class CapPa(OpenVision2):
    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        inputs, targets, mask = caption_targets(captions, cfg.pad_id)
        visual = self.visual_prefix(images)
        attn_mask = None
        if self.training and cfg.parallel_prob > 0:
            parallel = torch.rand(len(inputs), device=inputs.device) < cfg.parallel_prob
            inputs = torch.where(parallel[:, None], torch.full_like(inputs, cfg.mask_id), inputs)
            attn_mask = parallel_attention_mask(visual.shape[1], inputs.shape[1], cfg.decoder_mask, parallel)
        return caption_nll(self.decoder.hidden(visual, inputs, attn_mask=attn_mask), self.decoder.head, targets, mask)
