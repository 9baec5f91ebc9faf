"""The OpenVision ViT encoder (DESIGN.md §1.2), as a subclass of timm's VisionTransformer.

Being timm's class keeps timm's state-dict keys and its model API (forward_features,
forward_head, forward_intermediates, set_grad_checkpointing, ...). What differs from a stock
timm ViT is only what DESIGN.md §1.2 fixes:
- a bias-free patch convolution;
- a fixed 2-D sin-cos position table (MoCo-v3 ordering, zero CLS row), recomputed for whatever
  grid the input has, so it is not a parameter and any resolution works without resampling;
- the JAX initialisation.
The rest is timm configured as the paper's ViT: CLS token, no pre-norm, LayerNorm eps 1e-6,
exact GELU, pooled = LayerNorm(mean of patch tokens), tokens without a final LayerNorm.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import VisionTransformer

from ..preprocess import Preprocess
from .posemb import sincos_2d, sincos_2d_with_cls
from .registry import parse_encoder_name


def pretrained_cfg(image_size: int) -> dict:
    """timm's pretrained_cfg of an encoder at image_size: the preprocessing it was trained with (squash
    resize to image_size, bilinear, ImageNet mean/std, no crop), as a feature extractor (no head)."""
    return dict(Preprocess(image_size).timm(), num_classes=0, first_conv="patch_embed.proj", classifier="head",
                paper_ids="arXiv:2509.01644")


class BiasFreePatchEmbed(PatchEmbed):
    """The released patch embedding: a bias-free convolution with VALID padding.

    timm gives the patch conv a bias unless pre_norm is on; OpenVision's has none. timm also
    refuses an image side that is not a multiple of the patch; the released Flax conv (VALID,
    kernel = stride = patch) instead drops the remainder, e.g. 384 px in 14 px patches is a 27x27
    grid (DESIGN.md §1.2). Cropping the bottom/right remainder first is exactly that convolution.
    """

    def __init__(self, *args, bias: bool = True, **kwargs):
        super().__init__(*args, bias=False, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        patch_h, patch_w = self.patch_size
        return super().forward(x[..., : height - height % patch_h, : width - width % patch_w])


def _mlp_with_exact_width(hidden: int):
    """timm sizes the MLP as int(dim * mlp_ratio); pin the width so e.g. So400m gets 4304 exactly."""

    def build(in_features, hidden_features=None, **kwargs):
        return Mlp(in_features, hidden_features=hidden, **kwargs)

    return build


class OpenVisionViT(VisionTransformer):
    """ViT returning (pooled, patch_tokens) from forward_tokens; forward() gives the pooled feature."""

    def __init__(self, *, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_dim: int, pre_norm: bool = False, class_token: bool = True, device=None):
        # pre_norm (a LayerNorm after the position embedding, as CLIP's ln_pre) and class_token=False
        # (SigLIP-style, no CLS) are options beyond the paper, for towers that HF CLIPVisionModel /
        # SiglipVisionModel can express exactly; the defaults are the paper's ViT.
        super().__init__(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_layer=_mlp_with_exact_width(mlp_dim), num_classes=0, global_pool="avg", fc_norm=True,
            class_token=class_token, pos_embed="none", pre_norm=pre_norm, dynamic_img_size=True,
            embed_layer=BiasFreePatchEmbed, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
            weight_init="skip", device=device,
        )
        self.mlp_dim = mlp_dim
        # Position tables by (grid, device), each made once where it is first used: rebuilding one per
        # forward is float64 work on the CPU and a host-to-device copy. Not a buffer: checkpoints and
        # models built on the meta device stay as they were, and DDP has nothing to broadcast.
        self._position_tables: dict[tuple, torch.Tensor] = {}
        # What timm's resolve_data_config reads; without it timm assumes 224 px bicubic centre-crop 0.875.
        self.pretrained_cfg = self.default_cfg = pretrained_cfg(img_size)
        if self.patch_embed.proj.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The JAX initialisation of DESIGN.md §1.2 (timm's 'skip' mode leaves tensors uninitialised)."""
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        # Flax's kaiming_uniform (He-uniform): U(+-sqrt(6 / fan_in)), fan_in = 3 * patch * patch. Not
        # PyTorch's Linear/Conv default kaiming_uniform_(a=sqrt(5)), whose bound is sqrt(1 / fan_in).
        nn.init.kaiming_uniform_(self.patch_embed.proj.weight, a=0.0, mode="fan_in", nonlinearity="relu")
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=0.02)
            nn.init.normal_(block.attn.proj.weight, std=0.02)
            nn.init.normal_(block.mlp.fc1.weight, std=0.02)
            # variance_scaling(0.3072, fan_out, truncated normal): 0.8796 corrects the truncation at 2 std.
            std = math.sqrt(0.3072 / block.mlp.fc2.weight.shape[0]) / 0.87962566103423978
            nn.init.trunc_normal_(block.mlp.fc2.weight, std=std, a=-2 * std, b=2 * std)
            for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.zeros_(linear.bias)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _position_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The table added after CLS is prepended: a zero row for CLS (none without CLS), then the patches."""
        if self.cls_token is None:
            return sincos_2d(grid_h, grid_w, self.embed_dim)
        return sincos_2d_with_cls(grid_h, grid_w, self.embed_dim)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # x is NHWC (dynamic_img_size): the grid is known here, so any resolution gets its table.
        batch, grid_h, grid_w, dim = x.shape
        x = x.reshape(batch, -1, dim)
        key = (grid_h, grid_w, x.device)
        if key not in self._position_tables:
            self._position_tables[key] = self._position_table(grid_h, grid_w).to(x.device)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        return x + self._position_tables[key].to(x.dtype)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] (CLS dropped, no LayerNorm): what a caption decoder reads. Unlike
        forward_tokens it leaves the pooled output's norm (fc_norm) out of the graph."""
        return self.forward_features(images)[:, self.num_prefix_tokens:]

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, D], patch tokens [B, N, D]); CLS dropped from both, no LayerNorm on the tokens."""
        tokens = self.patch_tokens(images)
        return self.fc_norm(tokens.mean(dim=1)), tokens


def create_encoder(name: str, img_size: int = 224, device=None, *, pre_norm: bool = False,
                   class_token: bool = True) -> OpenVisionViT:
    """Build an encoder by name, e.g. create_encoder("L/14", 224) or create_encoder("S/16")."""
    size, patch = parse_encoder_name(name)
    return OpenVisionViT(img_size=img_size, patch_size=patch, embed_dim=size.width, depth=size.depth,
                         num_heads=size.heads, mlp_dim=size.mlp_dim, pre_norm=pre_norm,
                         class_token=class_token, device=device)
