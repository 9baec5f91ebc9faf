"""OpenVision 1, the side-by-side baseline (DESIGN.md §6): the same ViT, plus a text encoder, two
contrastive losses and a caption decoder that predicts the whole caption in parallel.

- Image embedding: the ViT's pooled vector (GAP -> LN) -> bias-free Dense to embed_dim.
- Texts: the alt-text and one sentence of the long caption, each 80 tokens, through one text
  encoder as a single 2B batch; CLIP loss of the images against each, averaged, with a learned
  temperature (init log(1/0.07)), not clamped (as released; max_logit_scale=100 gives CLIP's clamp).
- Caption decoder: prefix = [all patch tokens; the alt-text's encoder tokens], both projected to the
  decoder width, then 128 learned queries; prefix-LM mask (prefix bidirectional, queries causal);
  the query outputs predict the long caption shifted left by one. The caption's own tokens are
  never fed in.
- Total = clip_loss_weight * contrastive + caption_loss_weight * caption (1 and 2 as released).

What the model returns: the caption loss's parts, as every method (models/losses.py), and
aux_loss = clip_loss_weight x contrastive; the loop adds caption_loss_weight x caption, which gives
1 x contrastive + 2 x caption as released. "caption_loss" and "contrastive_loss" are logged parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..options import with_default
from .config import ModelConfig
from .contrastive import contrastive_loss
from .decoder import BlockStack, attention_mask
from .losses import caption_nll, caption_targets
from .registry import Size, decoder_size
from .text_encoder import TextEncoder
from .vit import create_encoder



@dataclass
class OpenVision1Config(ModelConfig):
    """ModelConfig with OpenVision 1's method as default (its fields are ModelConfig's)."""

    method: str = with_default(ModelConfig, "method", "openvision1")


class QueryCaptionDecoder(BlockStack):
    """[projected patches; projected alt-text tokens; learned queries] -> logits at the queries."""

    def __init__(self, size: Size, vision_width: int, text_width: int, vocab_size: int, num_queries: int,
                 device=None):
        super().__init__()
        self.visual_proj = nn.Linear(vision_width, size.width, bias=False, device=device)
        self.text_proj = nn.Linear(text_width, size.width, bias=False, device=device)
        self.queries = nn.Parameter(torch.zeros(num_queries, size.width, device=device))
        self.build_stack(size, vocab_size, device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.queries, std=1.0)  # learnable_tokens, DESIGN.md §6
        for proj in (self.visual_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        self.reset_stack()

    def hidden(self, visual: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """visual [B, N, D_img], text_tokens [B, T, D_txt] -> final-LayerNorm outputs at the queries."""
        prefix = torch.cat([self.visual_proj(visual), self.text_proj(text_tokens)], dim=1)
        queries = self.queries.to(prefix.dtype).expand(len(prefix), -1, -1)
        x = torch.cat([prefix, queries], dim=1)
        mask = attention_mask(prefix.shape[1], queries.shape[1], "prefix", device=x.device)
        return self.norm(self.run_blocks(x, mask)[:, prefix.shape[1]:])

    def forward(self, visual: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """visual [B, N, D_img], text_tokens [B, T, D_txt] -> logits [B, num_queries, vocab]."""
        return self.head(self.hidden(visual, text_tokens))


def _accept_scalar_logit_scale(state_dict, prefix, *_) -> None:
    """Checkpoints written before logit_scale had shape [1] hold it as a 0-dim tensor: same value."""
    value = state_dict.get(f"{prefix}logit_scale")
    if value is not None and value.dim() == 0:
        state_dict[f"{prefix}logit_scale"] = value.reshape(1)


class OpenVision1(nn.Module):
    def __init__(self, config: OpenVision1Config, device=None):
        super().__init__()
        self.config = config
        text_size = decoder_size(config.text_encoder or config.decoder)
        embed_dim = config.embed_dim or text_size.width
        self.encoder = create_encoder(config.encoder, config.image_size, device=device)
        self.image_head = nn.Linear(self.encoder.embed_dim, embed_dim, bias=False, device=device)
        self.text_encoder = TextEncoder(text_size, config.vocab_size, config.alt_text_len, embed_dim, device=device)
        self.decoder = QueryCaptionDecoder(decoder_size(config.decoder), self.encoder.embed_dim, text_size.width,
                                           config.vocab_size, config.text_len, device=device)
        # Shape [1], not a 0-dim scalar: FSDP2 shards every parameter along dim 0 and refuses scalars.
        self.logit_scale = nn.Parameter(torch.empty(1, device=device))
        self._register_load_state_dict_pre_hook(_accept_scalar_logit_scale)
        if device is None or torch.device(device).type != "meta":
            self._init_own_parameters()

    @torch.no_grad()
    def _init_own_parameters(self) -> None:
        nn.init.normal_(self.image_head.weight, std=self.encoder.embed_dim ** -0.5)
        self.logit_scale.fill_(math.log(1 / 0.07))  # learned temperature, init 1/0.07 (DESIGN.md §6)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every part's initialisation (for a model materialised from the meta device)."""
        for part in (self.encoder, self.text_encoder, self.decoder):
            part.reset_parameters()
        self._init_own_parameters()

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, H, W] -> (pooled [B, D], patch tokens [B, N, D])."""
        return self.encoder.forward_tokens(images)

    def caption_logits(self, patch_tokens: torch.Tensor, alt_captions: torch.Tensor) -> torch.Tensor:
        """[B, text_len, vocab]: position i predicts caption token i + 1."""
        _, alt_tokens = self.text_encoder(alt_captions)
        return self.decoder(patch_tokens, alt_tokens)

    def forward(self, images: torch.Tensor, captions: torch.Tensor, alt_captions: torch.Tensor,
                sub_captions: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        pooled, patches = self.encode_image(images)
        image_emb = F.normalize(self.image_head(pooled), dim=-1)
        text_pooled, text_tokens = self.text_encoder(torch.cat([alt_captions, sub_captions]))
        alt_emb, sub_emb = F.normalize(text_pooled, dim=-1).chunk(2)
        log_scale = self.logit_scale[0]  # not clamped, as released; max_logit_scale=100 gives CLIP's clamp
        if cfg.max_logit_scale:
            log_scale = log_scale.clamp(max=math.log(cfg.max_logit_scale))
        scale = log_scale.exp()
        contrastive = (contrastive_loss(image_emb, alt_emb, scale) + contrastive_loss(image_emb, sub_emb, scale)) / 2

        hidden = self.decoder.hidden(patches, text_tokens[: len(images)])
        _, targets, mask = caption_targets(captions, cfg.pad_id)
        # 128 queries, 127 targets: the last query's target is a pad, masked out (labels_for_regress).
        targets = F.pad(targets, (0, hidden.shape[1] - targets.shape[1]), value=cfg.pad_id)
        mask = F.pad(mask, (0, hidden.shape[1] - mask.shape[1]), value=False)
        out = caption_nll(hidden, self.decoder.head, targets, mask, cfg.logits_chunk)
        return {**out, "aux_loss": cfg.clip_loss_weight * contrastive, "caption_loss": out["loss"].detach(),
                "contrastive_loss": contrastive.detach(), "logit_scale": scale.detach()}
