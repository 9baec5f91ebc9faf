"""OpenVision 2: ViT encoder -> random subset of its output tokens -> caption decoder (DESIGN.md §0-3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .decoder import CaptionDecoder
from .masking import check_keep_ratio, keep_eval_tokens, keep_random_tokens
from .registry import decoder_size
from .vit import create_encoder

NO_DECODER = "none"  # ModelConfig.decoder for an encoder-only model
EVAL_KEEP_DEFAULT = 0.0  # ModelConfig.eval_keep_ratio: 0 = the training keep_ratio (docs/BENCHMARKS.md)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; saved as config.json beside the weights."""

    encoder: str = "L/14"
    decoder: str = "L"
    image_size: int = 224
    keep_ratio: float = 0.35  # fraction of the encoder's output tokens the decoder sees in training
    # ... and at evaluation (captions, zero-shot, held-out loss); 0 = keep_ratio, as the release does
    # (it subsamples with train=False too). docs/BENCHMARKS.md measures 1.0 against keep_ratio.
    eval_keep_ratio: float = EVAL_KEEP_DEFAULT
    decoder_mask: str = "causal"  # "causal" as released, or "prefix" (visual tokens bidirectional)
    text_pos: str = "none"  # "none" as released, or "learned" text positions
    vocab_size: int = 32000
    text_len: int = 128  # caption sequence length including the trailing [CLS] (DESIGN.md §3.2)
    pad_id: int = 0
    # Encoder options beyond the paper (default = the paper's ViT): a LayerNorm before the blocks
    # (what HF CLIPVisionModel / LLaVA-1.5 need) and no CLS token (what SiglipVisionModel needs).
    pre_norm: bool = False
    class_token: bool = True

    def __post_init__(self):
        check_keep_ratio(self.keep_ratio)
        if self.eval_keep_ratio:
            check_keep_ratio(self.eval_keep_ratio)

    @property
    def decoding_keep_ratio(self) -> float:
        """The share of visual tokens the decoder sees at evaluation."""
        return self.eval_keep_ratio or self.keep_ratio
        if self.text_len < 3:
            raise UserError(f"text_len must be at least 3 ([bos], [eos], [CLS]), got {self.text_len}")

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def caption_targets(captions: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder inputs, targets and loss mask from [B, L] caption sequences (DESIGN.md §3.3).

    inputs = positions 0..L-2, target[i] = token[i+1]; the mask is the non-pad mask of the inputs
    shifted left by one with a 0 appended: 1 where the target is a real piece or [eos], 0 for
    pads and for the trailing [CLS].
    """
    inputs, targets = captions[:, :-1], captions[:, 1:]
    mask = torch.cat([inputs[:, 1:] != pad_id, torch.zeros_like(inputs[:, :1], dtype=torch.bool)], dim=1)
    return inputs, targets, mask


class OpenVision2(nn.Module):
    def __init__(self, config: ModelConfig, device=None):
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.encoder, config.image_size, device=device,
                                      pre_norm=config.pre_norm, class_token=config.class_token)
        # decoder "none": an encoder-only model, e.g. imported from the released vision-only weights.
        self.decoder = None if config.decoder == NO_DECODER else CaptionDecoder(
            decoder_size(config.decoder), self.encoder.embed_dim, config.vocab_size,
            config.text_len - 1, config.decoder_mask, config.text_pos, device=device)

    def require_decoder(self) -> None:
        if self.decoder is None:
            raise UserError("this checkpoint holds an encoder only (e.g. imported vision-only weights): "
                            "it cannot caption or compute the caption loss; train one with a decoder")

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, H, W] -> (pooled [B, D], patch tokens [B, N, D])."""
        return self.encoder.forward_tokens(images)

    def visual_prefix(self, images: torch.Tensor, keep_ratio: float | None = None) -> torch.Tensor:
        """The visual tokens the decoder sees: a random keep_ratio subset per example in training; in
        eval mode the config's decoding_keep_ratio, as one seeded subset (models/masking.py)."""
        _, tokens = self.encode_image(images)
        if self.training:
            return keep_random_tokens(tokens, self.config.keep_ratio if keep_ratio is None else keep_ratio)
        return keep_eval_tokens(tokens, self.config.decoding_keep_ratio if keep_ratio is None else keep_ratio)

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Caption loss. Returns the token-mean loss plus its parts (nll_sum, num_tokens), so callers
        can normalise by a count taken over several micro-batches or ranks instead."""
        self.require_decoder()
        inputs, targets, mask = caption_targets(captions, self.config.pad_id)
        logits = self.decoder(self.visual_prefix(images), inputs)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        nll_sum = (nll * mask.flatten()).sum()
        num_tokens = mask.sum()
        return {"loss": nll_sum / (num_tokens + 1e-8), "nll_sum": nll_sum, "num_tokens": num_tokens}
