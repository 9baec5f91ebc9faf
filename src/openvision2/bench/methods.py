"""The four models `ov2 bench` compares, each built at one shared shape, with its training loss.

- openvision2: the paper's method (keep 35% of the visual tokens, causal concat decoder).
- openvision1: the baseline of DESIGN.md §6 built in this codebase (same ViT).
- cappa: OpenVision 2 with every visual token kept (the "CapPa baseline" of DESIGN.md §5.3).
- coca: open_clip's CoCa with the same ViT shape, a text tower and a multimodal decoder of the
  decoder's width and depth, open_clip's CoCaLoss (1 x contrastive + 2 x caption) and its own
  defaults otherwise (attentional pooler with 256 queries, causal text tower over the caption,
  cross-attention in the decoder).
Every model gets the same batch: images, a 128-token caption (127 predicted positions), and for
OpenVision 1 two 80-token texts. Token ids are random: the cost does not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import UserError
from ..methods import all_methods, build_model as build_method_model
from ..models.config import ModelConfig
from ..models.losses import objective
from ..models.registry import decoder_size, parse_encoder_name
from ..options import option, with_default

METHODS = (*all_methods(), "coca")  # the registry's methods (methods.py) and open_clip's CoCa
CAPTION_LOSS_WEIGHT = 2.0  # the release's weight, applied to every method's caption loss
_BOS, _EOS, _CLS, _FIRST_WORD = 1, 2, 101, 999  # OpenVision's WordPiece ids (DESIGN.md §3.1)


@dataclass
class BenchShape(ModelConfig):
    """The shared shape: a ModelConfig (S/16 with the S decoder by default) and the batch size.
    text_encoder is also CoCa's text tower; empty = the decoder's size."""

    encoder: str = with_default(ModelConfig, "encoder", "S/16")
    decoder: str = with_default(ModelConfig, "decoder", "S")
    batch_size: int = option(2, "images per step", low=1)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown bench method {method!r}: use some of {', '.join(METHODS)}")
    return method


def batch_fields(method: str) -> tuple[str, ...]:
    from ..methods import get_method

    return () if method == "coca" else get_method(method).batch_fields


def _token_rows(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """[bos] words [eos] [CLS], full length: the most expensive case, as with long synthetic captions."""
    device = generator.device
    words = torch.randint(min(_FIRST_WORD, vocab // 2), vocab, (batch, length - 3), generator=generator, device=device)
    ends = torch.tensor([_EOS, _CLS], device=device).clamp(max=vocab - 1).expand(batch, 2)
    return torch.cat([torch.full((batch, 1), _BOS, device=device), words, ends], dim=1)


def make_batch(method: str, shape: BenchShape, batch_size: int, seed: int = 0,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A random batch made where it is used: a largest-batch trial on a GPU draws its images there
    (tens of thousands of images are seconds of CPU work per trial, then a copy)."""
    generator = torch.Generator(device).manual_seed(seed)
    batch = {"images": torch.randn(batch_size, 3, shape.image_size, shape.image_size, generator=generator,
                                   device=generator.device),
             "captions": _token_rows(batch_size, shape.text_len, shape.vocab_size, generator)}
    if "alt_captions" in batch_fields(method):
        batch["alt_captions"] = _token_rows(batch_size, shape.alt_text_len, shape.vocab_size, generator)
        batch["sub_captions"] = _token_rows(batch_size, shape.alt_text_len, shape.vocab_size, generator)
    return batch


def build_model(method: str, shape: BenchShape, device=None) -> nn.Module:
    check_method(method)
    if method == "coca":
        return build_coca(shape).to(device)
    return build_method_model(replace(ModelConfig.from_dict(shape.to_dict()), method=method), device=device)


def build_coca(shape: BenchShape) -> nn.Module:
    """open_clip.CoCa with this shape's ViT, text tower and decoder widths and depths."""
    import open_clip

    enc, patch = parse_encoder_name(shape.encoder)
    dec = decoder_size(shape.decoder)
    txt = decoder_size(shape.text_encoder or shape.decoder)
    vision_cfg = dict(image_size=shape.image_size, patch_size=patch, width=enc.width, layers=enc.depth,
                      head_width=enc.width // enc.heads, mlp_ratio=enc.mlp_dim / enc.width,
                      attentional_pool=True, output_tokens=True)
    text_cfg = dict(context_length=shape.text_len, vocab_size=shape.vocab_size, width=txt.width, heads=txt.heads,
                    layers=txt.depth, mlp_ratio=txt.mlp_dim / txt.width, embed_cls=True, output_tokens=True)
    multimodal_cfg = dict(context_length=shape.text_len, vocab_size=shape.vocab_size, width=dec.width,
                          heads=dec.heads, layers=dec.depth, mlp_ratio=dec.mlp_dim / dec.width)
    model = open_clip.CoCa(embed_dim=txt.width, multimodal_cfg=multimodal_cfg, text_cfg=text_cfg,
                           vision_cfg=vision_cfg, pad_id=0)
    # open_clip 3.3 leaves the decoder's text_projection as torch.empty (never initialised; its
    # init_parameters is broken), which can hold NaNs: initialise it as that method means to.
    nn.init.normal_(model.text_decoder.text_projection, std=dec.width ** -0.5)
    return model


class StepLoss:
    """The scalar a training step backpropagates, as `ov2 train` forms it for each method."""

    def __init__(self, method: str):
        self.method = method
        if method == "coca":
            from open_clip.loss import CoCaLoss

            self.coca_loss = CoCaLoss(caption_loss_weight=CAPTION_LOSS_WEIGHT, clip_loss_weight=1.0, pad_id=0)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "images"}
        if self.method != "coca":
            out = model(batch["images"], **inputs)
            return objective(out, CAPTION_LOSS_WEIGHT, 1 / (out["num_tokens"] + 1e-8))
        out = model(batch["images"], batch["captions"])
        clip, caption = self.coca_loss(out["image_features"], out["text_features"], out["logits"], out["labels"],
                                       out["logit_scale"])
        return clip + caption
