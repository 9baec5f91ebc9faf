"""OpenVision 2: ViT encoder -> random subset of its output tokens -> caption decoder (DESIGN.md §0-3).
ModelConfig and caption_targets are re-exported here, where they used to live."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .config import NO_DECODER, ModelConfig
from .decoder import CaptionDecoder
from .losses import caption_nll, caption_targets
from .masking import keep_eval_tokens, keep_random_tokens
from .registry import decoder_size
from .vit import create_encoder


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
        # The caption loss never reads the pooled output (evaluations and exports do), so its norm is
        # not trained: frozen at its initialisation, as it always stayed, and left out of the optimizer.
        self.encoder.fc_norm.requires_grad_(False)

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
        tokens = self.encoder.patch_tokens(images)  # the pooled output is not computed: it would get no gradient
        if self.training:
            return keep_random_tokens(tokens, self.config.keep_ratio if keep_ratio is None else keep_ratio)
        return keep_eval_tokens(tokens, self.config.decoding_keep_ratio if keep_ratio is None else keep_ratio)

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Caption loss: {nll_sum, num_tokens, loss} (models/losses.py), so callers can normalise by a
        count taken over several micro-batches or ranks instead of the token mean."""
        self.require_decoder()
        inputs, targets, mask = caption_targets(captions, self.config.pad_id)
        return caption_nll(self.decoder.hidden(self.visual_prefix(images), inputs), self.decoder.head, targets, mask,
                           self.config.logits_chunk)


__all__ = ["ModelConfig", "NO_DECODER", "OpenVision2", "caption_targets"]
