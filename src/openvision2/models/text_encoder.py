"""OpenVision 1's text encoder (DESIGN.md §6): a non-causal pre-LN transformer over alt-text-sized
sequences, pooled at the trailing [CLS] position.

The blocks are the caption decoder's (LN -> MHSA with bias -> LN -> tanh-GELU MLP), run without a
mask: every position sees every other, pads included, as big_vision's text_transformer does.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import BlockStack
from .registry import Size


class TextEncoder(BlockStack):
    head_name = "proj"  # the output layer projects the [CLS] output to the contrastive width

    def __init__(self, size: Size, vocab_size: int, max_len: int, out_dim: int, device=None):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size, size.width, device=device)
        self.pos_embed = nn.Parameter(torch.zeros(max_len, size.width, device=device))
        self.build_stack(size, out_dim, device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)  # DESIGN.md §6
        self.reset_stack()  # the decoder's block init: both are text_transformer blocks (DESIGN.md §6)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] ([bos] ... [eos] pads [CLS]) -> (pooled [B, out_dim], tokens [B, L-1, width]).

        pooled = proj(LN(output at the last, [CLS], position)); tokens are the other positions'
        outputs before the final LayerNorm, which OpenVision 1's caption decoder reads (DESIGN.md §6)."""
        x = self.run_blocks(self.token_embed(ids) + self.pos_embed[: ids.shape[1]], None)
        return self.proj(self.norm(x[:, -1])), x[:, :-1]
