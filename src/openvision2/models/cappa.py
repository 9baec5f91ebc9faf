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
A CapPa checkpoint loads as an OpenVision 2 model (the weights are the same; only training differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from .decoder import attention_mask
from .openvision2 import ModelConfig, OpenVision2, caption_targets


@dataclass
class CapPaConfig(ModelConfig):
    keep_ratio: float = 1.0
    parallel_prob: float = 0.0  # CapPa's masked_pred_prob (0.75 in its reference config)
    mask_id: int = 103  # [MASK] in OpenVision's WordPiece vocabulary

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.parallel_prob <= 1.0:
            raise UserError(f"parallel_prob must be in [0, 1], got {self.parallel_prob}")
        if self.parallel_prob > 0 and self.text_pos == "none":
            raise UserError("parallel prediction needs text positions: set text_pos=learned")
        if self.parallel_prob > 0 and not 0 <= self.mask_id < self.vocab_size:
            raise UserError(f"mask_id {self.mask_id} is outside the vocabulary of {self.vocab_size}")


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
        logits = self.decoder(visual, inputs, attn_mask=attn_mask)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        nll_sum = (nll * mask.flatten()).sum()
        num_tokens = mask.sum()
        return {"loss": nll_sum / (num_tokens + 1e-8), "nll_sum": nll_sum, "num_tokens": num_tokens}
