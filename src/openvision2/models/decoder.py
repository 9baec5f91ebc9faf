"""The OpenVision 2 caption decoder (DESIGN.md §2): one pre-LN transformer over [visual; text].

Kept visual tokens are projected (no bias) to the decoder width and concatenated in front of
the text embeddings; a single stack of blocks runs over the whole sequence; only the text
positions go through the final LayerNorm and the bias-free vocabulary head.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .config import DECODER_MASKS, TEXT_POSITIONS
from .registry import Size
_INIT_DEPTH = 12  # the released init hard-wires depth 12 into the output-projection std (DESIGN.md §2)
# The plain causal mask, passed as is_causal=True instead of a boolean [L, L] tensor: SDPA then may use
# Flash attention, which an explicit mask rules out, and no mask is built per forward.
CAUSAL = "causal"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | str | None) -> torch.Tensor:
    if isinstance(mask, str):  # CAUSAL (q and k cover the same positions)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class DecoderBlock(nn.Module):
    """LN -> self-attention (q/k/v/out with bias) -> residual; LN -> MLP (tanh GELU) -> residual."""

    def __init__(self, width: int, heads: int, mlp_dim: int, device=None):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6, device=device)
        self.qkv = nn.Linear(width, 3 * width, device=device)
        self.proj = nn.Linear(width, width, device=device)
        self.norm2 = nn.LayerNorm(width, eps=1e-6, device=device)
        self.fc1 = nn.Linear(width, mlp_dim, device=device)
        self.fc2 = nn.Linear(mlp_dim, width, device=device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The released text_transformer block initialisation, shared by the OV2 decoder (DESIGN.md §2) and
        OpenVision 1's text encoder and decoder (DESIGN.md §6)."""
        width = self.qkv.in_features
        out_std = width ** -0.5 * (2 * _INIT_DEPTH) ** -0.5
        stds = (width ** -0.5, out_std, (2 * width) ** -0.5, out_std)
        for linear, std in zip((self.qkv, self.proj, self.fc1, self.fc2), stds):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        for norm in (self.norm1, self.norm2):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | str | None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))

    def forward_cached(self, x: torch.Tensor, mask: torch.Tensor | None,
                       past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        """forward() for new positions x that also attend to the cached keys/values of earlier ones;
        returns the output and the keys/values of all positions so far ([B, heads, L, head_dim])."""
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = attend(q, k, v, mask)
        x = x + self.proj(out.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh")), (k, v)


def attention_mask(num_visual: int, num_text: int, kind: str, device=None) -> torch.Tensor:
    """Boolean [L, L] mask (True = may attend) over the [visual; text] sequence.

    causal: plain causal over the whole sequence, as the released code builds it;
    prefix: visual tokens see each other bidirectionally, text stays causal (OV1's prefix-LM).
    """
    length = num_visual + num_text
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if kind == "prefix":
        mask[:num_visual, :num_visual] = True
    elif kind != "causal":
        raise UserError(f"unknown decoder mask {kind!r}: use one of {', '.join(DECODER_MASKS)}")
    return mask


class BlockStack(nn.Module):
    """The shape the three text transformers share (the caption decoder, OpenVision 1's text encoder
    and its query decoder): DecoderBlocks, a final LayerNorm and a bias-free output layer (named
    by head_name: the vocabulary head, or the text encoder's projection)."""

    head_name = "head"

    def build_stack(self, size: Size, out_dim: int, device=None) -> None:
        self.width = size.width
        self.blocks = nn.ModuleList(DecoderBlock(size.width, size.heads, size.mlp_dim, device=device)
                                    for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.width, eps=1e-6, device=device)
        setattr(self, self.head_name, nn.Linear(size.width, out_dim, bias=False, device=device))
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_stack(self) -> None:
        """Blocks (released init), final LayerNorm (1, 0), output layer N(0, 1/width)."""
        for block in self.blocks:
            block.reset_parameters()
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.normal_(getattr(self, self.head_name).weight, std=self.width ** -0.5)

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | str | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class CaptionDecoder(BlockStack):
    def __init__(self, size: Size, vision_width: int, vocab_size: int, max_text_len: int,
                 mask: str = "causal", text_pos: str = "none", device=None):
        super().__init__()
        if mask not in DECODER_MASKS:
            raise UserError(f"unknown decoder mask {mask!r}: use one of {', '.join(DECODER_MASKS)}")
        if text_pos not in TEXT_POSITIONS:
            raise UserError(f"unknown text_pos {text_pos!r}: use one of {', '.join(TEXT_POSITIONS)}")
        self.mask_kind = mask
        self.token_embed = nn.Embedding(vocab_size, size.width, device=device)
        # As released the decoder has no position embedding; learned text positions are an option.
        self.text_pos = (nn.Parameter(torch.zeros(max_text_len, size.width, device=device))
                         if text_pos == "learned" else None)
        self.visual_proj = nn.Linear(vision_width, size.width, bias=False, device=device)
        self.build_stack(size, vocab_size, device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The released initialisation (DESIGN.md §2)."""
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.visual_proj.weight, std=self.visual_proj.in_features ** -0.5)
        if self.text_pos is not None:
            nn.init.normal_(self.text_pos, std=0.01)
        self.reset_stack()

    def mask_for(self, num_visual: int, num_text: int, device) -> torch.Tensor | str:
        """The configured mask over [visual; text]: CAUSAL for the plain causal one."""
        if self.mask_kind == CAUSAL:
            return CAUSAL
        return attention_mask(num_visual, num_text, self.mask_kind, device=device)

    def hidden(self, visual: torch.Tensor, text_ids: torch.Tensor,
               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual [B, K, D_img], text_ids [B, T] -> final-LayerNorm outputs [B, T, width] at the text
        positions (the vocabulary head turns them into logits; models/losses.py caption_nll).

        attn_mask (bool, [K+T, K+T] or [B, 1, K+T, K+T], True = may attend) replaces the configured
        mask, e.g. for CapPa's parallel prediction (models/cappa.py)."""
        num_visual, num_text = visual.shape[1], text_ids.shape[1]
        text = self.token_embed(text_ids)
        if self.text_pos is not None:
            text = text + self.text_pos[:num_text]
        projected = self.visual_proj(visual)
        x = torch.cat([projected, text.to(projected.dtype)], dim=1)
        mask = self.mask_for(num_visual, num_text, x.device) if attn_mask is None else attn_mask
        return self.norm(self.run_blocks(x, mask)[:, num_visual:])

    def forward(self, visual: torch.Tensor, text_ids: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual [B, K, D_img], text_ids [B, T] -> logits [B, T, vocab] at the text positions."""
        return self.head(self.hidden(visual, text_ids, attn_mask))

    def forward_cached(self, text_ids: torch.Tensor, cache: "KVCache | None" = None,
                       visual: torch.Tensor | None = None) -> tuple[torch.Tensor, "KVCache"]:
        """Incremental decoding with a key/value cache; gives forward()'s logits for the same sequence.

        Without a cache: runs visual [B, K, D_img] and text_ids [B, T] (T may be 0) and returns
        their text logits and a cache of every position. With one: runs only the new text_ids
        [B, T] after the cached positions, which they all see (and, causally, each other).
        """
        num_new = text_ids.shape[1]
        offset = 0 if cache is None else cache.num_text
        text = self.token_embed(text_ids)
        if self.text_pos is not None:
            text = text + self.text_pos[offset:offset + num_new]
        if cache is None:
            projected = self.visual_proj(visual)
            x = torch.cat([projected, text.to(projected.dtype)], dim=1)
            mask = self.mask_for(visual.shape[1], num_new, x.device)
            past = [None] * len(self.blocks)
        else:
            x, past = text, cache.layers
            # one new token sees everything (no mask needed); several see the cache plus a causal block
            mask = None if num_new == 1 else torch.cat(
                [torch.ones(num_new, cache.length, dtype=torch.bool, device=x.device),
                 torch.ones(num_new, num_new, dtype=torch.bool, device=x.device).tril()], dim=1)
        layers = []
        for block, kv in zip(self.blocks, past):
            x, kv = block.forward_cached(x, mask, kv)
            layers.append(kv)
        return self.head(self.norm(x[:, x.shape[1] - num_new:])), KVCache(layers, offset + num_new)


class KVCache:
    """Keys and values of every decoder layer for the positions run so far (visual prefix, then
    text), each [B, heads, length, head_dim], so a new token costs one position's work."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], num_text: int):
        self.layers, self.num_text = layers, num_text

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2]

    def select(self, rows: torch.Tensor) -> "KVCache":
        """The cache of the given batch rows (reorders beams; repeats one image's prefix for many prompts)."""
        return KVCache([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.layers], self.num_text)
