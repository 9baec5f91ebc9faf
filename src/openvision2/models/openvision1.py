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

How the loss reaches the training loop: the loop backpropagates out["loss"] * caption_loss_weight
(the release's x2 on the caption loss). So "loss" here is the total divided by caption_loss_weight:
caption + (clip_loss_weight / caption_loss_weight) * contrastive, and the loop's scaling restores
1 * contrastive + 2 * caption exactly. The parts are returned too ("total_loss", "caption_loss",
"contrastive_loss"); "nll_sum"/"num_tokens" are the caption loss's, as for OpenVision 2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..contrastive import contrastive_loss
from ..errors import UserError
from .decoder import DecoderBlock, attention_mask
from .openvision2 import caption_targets
from .registry import Size, decoder_size
from .text_encoder import TextEncoder
from .vit import create_encoder



@dataclass
class OpenVision1Config:
    encoder: str = "L/14"
    text_encoder: str = "L"  # DESIGN.md §6: Ti/S/B/L/So400m/H text sizes are the decoder table's
    decoder: str = "L"
    image_size: int = 224
    embed_dim: int = 0  # contrastive embedding width; 0 = the text encoder's width (DESIGN.md §6 out_dim)
    vocab_size: int = 32000
    text_len: int = 128  # long caption, as for OpenVision 2; also the number of decoder queries
    alt_text_len: int = 80  # alt-text and sub-caption length including the trailing [CLS]
    clip_loss_weight: float = 1.0
    # The release lets the learned temperature grow freely; CLIP clamps the logit scale at 100.
    # 0 = no clamp, as released; e.g. 100 for CLIP's.
    max_logit_scale: float = 0.0
    caption_loss_weight: float = 2.0
    pad_id: int = 0
    method: str = "openvision1"  # lets a checkpoint reader tell the model families apart

    def __post_init__(self):
        if self.text_len < 3 or self.alt_text_len < 3:
            raise UserError("text_len and alt_text_len must be at least 3 ([bos], [eos], [CLS])")
        if self.caption_loss_weight <= 0:
            raise UserError(f"caption_loss_weight must be positive, got {self.caption_loss_weight}")
        if self.max_logit_scale < 0:
            raise UserError(f"max_logit_scale must be 0 (no clamp) or positive, got {self.max_logit_scale}")

    @classmethod
    def from_dict(cls, data: dict) -> "OpenVision1Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class QueryCaptionDecoder(nn.Module):
    """[projected patches; projected alt-text tokens; learned queries] -> logits at the queries."""

    def __init__(self, size: Size, vision_width: int, text_width: int, vocab_size: int, num_queries: int,
                 device=None):
        super().__init__()
        self.width = size.width
        self.visual_proj = nn.Linear(vision_width, size.width, bias=False, device=device)
        self.text_proj = nn.Linear(text_width, size.width, bias=False, device=device)
        self.queries = nn.Parameter(torch.zeros(num_queries, size.width, device=device))
        self.blocks = nn.ModuleList(DecoderBlock(size.width, size.heads, size.mlp_dim, device=device)
                                    for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.width, eps=1e-6, device=device)
        self.head = nn.Linear(size.width, vocab_size, bias=False, device=device)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        width = self.width
        nn.init.normal_(self.queries, std=1.0)  # learnable_tokens, DESIGN.md §6
        for proj in (self.visual_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        for block in self.blocks:
            block.reset_parameters()
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.normal_(self.head.weight, std=width ** -0.5)

    def forward(self, visual: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """visual [B, N, D_img], text_tokens [B, T, D_txt] -> logits [B, num_queries, vocab]."""
        prefix = torch.cat([self.visual_proj(visual), self.text_proj(text_tokens)], dim=1)
        queries = self.queries.to(prefix.dtype).expand(len(prefix), -1, -1)
        x = torch.cat([prefix, queries], dim=1)
        mask = attention_mask(prefix.shape[1], queries.shape[1], "prefix", device=x.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x[:, prefix.shape[1]:]))


class OpenVision1(nn.Module):
    # Batch fields this model needs beside the images and the long caption (see data/build.py).
    batch_fields = ("alt_captions", "sub_captions")

    def __init__(self, config: OpenVision1Config, device=None):
        super().__init__()
        self.config = config
        text_size = decoder_size(config.text_encoder)
        embed_dim = config.embed_dim or text_size.width
        self.encoder = create_encoder(config.encoder, config.image_size, device=device)
        self.image_head = nn.Linear(self.encoder.embed_dim, embed_dim, bias=False, device=device)
        self.text_encoder = TextEncoder(text_size, config.vocab_size, config.alt_text_len, embed_dim, device=device)
        self.decoder = QueryCaptionDecoder(decoder_size(config.decoder), self.encoder.embed_dim, text_size.width,
                                           config.vocab_size, config.text_len, device=device)
        self.logit_scale = nn.Parameter(torch.empty((), device=device))
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
        log_scale = self.logit_scale
        if cfg.max_logit_scale:
            log_scale = log_scale.clamp(max=math.log(cfg.max_logit_scale))
        scale = log_scale.exp()
        contrastive = (contrastive_loss(image_emb, alt_emb, scale) + contrastive_loss(image_emb, sub_emb, scale)) / 2

        logits = self.decoder(patches, text_tokens[: len(images)])
        _, targets, mask = caption_targets(captions, cfg.pad_id)
        # 128 queries, 127 targets: the last query's target is a pad, masked out (labels_for_regress).
        targets = F.pad(targets, (0, logits.shape[1] - targets.shape[1]), value=cfg.pad_id)
        mask = F.pad(mask, (0, logits.shape[1] - mask.shape[1]), value=False)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        nll_sum = (nll * mask.flatten()).sum()
        num_tokens = mask.sum()
        caption = nll_sum / (num_tokens + 1e-8)
        total = cfg.clip_loss_weight * contrastive + cfg.caption_loss_weight * caption
        return {"loss": total / cfg.caption_loss_weight, "total_loss": total, "caption_loss": caption,
                "contrastive_loss": contrastive, "nll_sum": nll_sum, "num_tokens": num_tokens,
                "logit_scale": scale.detach()}

    @torch.no_grad()
    def predict_caption_ids(self, images: torch.Tensor, alt_captions: torch.Tensor) -> torch.Tensor:
        """Argmax of every query at once: [B, text_len] ids of the caption after [bos]."""
        _, patches = self.encode_image(images)
        return self.caption_logits(patches, alt_captions).argmax(dim=-1)
