"""What an exported or imported encoder is: its shape and options, independent of any library.

Every format module converts between this project's encoder state dict (timm key names, see
models/vit.py) and its own keys; EncoderSpec carries what the keys alone do not say (heads, image
size, options) and builds the one thing our encoder computes but does not store: the sin-cos table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..models.openvision2 import NO_DECODER, ModelConfig
from ..models.posemb import sincos_2d, sincos_2d_with_cls
from ..models.registry import ENCODER_SIZES, Size

LAYER_NORM_EPS = 1e-6  # DESIGN.md §1.2: every LayerNorm of the encoder


@dataclass(frozen=True)
class EncoderSpec:
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int
    image_size: int
    pre_norm: bool = False
    class_token: bool = True

    @property
    def grid(self) -> int:
        """Patches per side: the released VALID convolution drops the remainder (384 px / 14 = 27)."""
        return self.image_size // self.patch

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def pos_table(self) -> torch.Tensor:
        """The sin-cos table materialised as weights: [N (+1 zero CLS row), W]."""
        build = sincos_2d_with_cls if self.class_token else sincos_2d
        return build(self.grid, self.grid, self.width)

    @classmethod
    def of(cls, encoder: nn.Module, image_size: int) -> "EncoderSpec":
        return cls(width=encoder.embed_dim, depth=len(encoder.blocks), heads=encoder.blocks[0].attn.num_heads,
                   mlp_dim=encoder.mlp_dim, patch=encoder.patch_embed.patch_size[0], image_size=image_size,
                   pre_norm=not isinstance(encoder.norm_pre, nn.Identity),
                   class_token=encoder.cls_token is not None)

    def encoder_name(self) -> str:
        """The registry name ("L/14", "mu/8") of this shape; UserError if the registry has none."""
        size = Size(self.width, self.depth, self.heads, self.mlp_dim)
        for name, known in ENCODER_SIZES.items():
            if known == size:
                return f"{name}/{self.patch}"
        raise UserError(f"no encoder size with width {self.width}, depth {self.depth}, {self.heads} heads and "
                        f"MLP {self.mlp_dim} in models/registry.py: add it to ENCODER_SIZES to import it")

    def model_config(self) -> ModelConfig:
        """An encoder-only ModelConfig (decoder "none") that rebuilds this encoder."""
        return ModelConfig(encoder=self.encoder_name(), decoder=NO_DECODER, image_size=self.image_size,
                           pre_norm=self.pre_norm, class_token=self.class_token)

    def check_image_size(self) -> None:
        """Any size of at least one patch: a side that is not a multiple of the patch is floored, as
        the released VALID convolution and every target library's strided convolution do."""
        if self.image_size < self.patch:
            raise UserError(f"image size {self.image_size} is smaller than the patch size {self.patch}")


def mlp_ratio(width: int, mlp_dim: int) -> float:
    """A ratio with int(width * ratio) == mlp_dim, as open_clip and timm size the MLP from a ratio."""
    ratio = mlp_dim / width
    return ratio if int(width * ratio) == mlp_dim else (mlp_dim + 0.5) / width


def split_qkv(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's and open_clip's packed q/k/v (rows in q, k, v order) -> three tensors."""
    return tuple(t.contiguous() for t in weight.chunk(3, dim=0))
