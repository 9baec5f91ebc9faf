"""OpenVision 1's text encoder (DESIGN.md §6): a non-causal pre-LN transformer over alt-text-sized
sequences, pooled at the trailing [CLS] position.

The blocks are the caption decoder's (LN -> MHSA with bias -> LN -> tanh-GELU MLP), run without a
mask: every position sees every other, pads included, as big_vision's text_transformer does.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import DecoderBlock
from .registry import Size


class TextEncoder(nn.Module):
    def __init__(self, size: Size, vocab_size: int, max_len: int, out_dim: int, device=None):
        super().__init__()
        self.width = size.width
        self.token_embed = nn.Embedding(vocab_size, size.width, device=device)
        self.pos_embed = nn.Parameter(torch.zeros(max_len, size.width, device=device))
        self.blocks = nn.ModuleList(DecoderBlock(size.width, size.heads, size.mlp_dim, device=device)
                                    for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.width, eps=1e-6, device=device)
        self.proj = nn.Linear(size.width, out_dim, bias=False, device=device)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        width = self.width
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)  # DESIGN.md §6
        for block in self.blocks:  # the same text_transformer block (and init) as the decoder's, DESIGN.md §6
            block.reset_parameters()
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.normal_(self.proj.weight, std=width ** -0.5)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] ([bos] ... [eos] pads [CLS]) -> (pooled [B, out_dim], tokens [B, L-1, width]).

        pooled = proj(LN(output at the last, [CLS], position)); tokens are the other positions'
        outputs before the final LayerNorm, which OpenVision 1's caption decoder reads (DESIGN.md §6)."""
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, None)
        return self.proj(self.norm(x[:, -1])), x[:, :-1]
