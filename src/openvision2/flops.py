"""Analytic forward FLOPs per image and parameter counts, per part, for the three methods.

Counting convention (DESIGN.md §5.4), the one under which the paper's four FLOPs/image figures come out:
- a matmul of [m, k] by [k, n] costs 2*m*k*n FLOPs; LayerNorms, activations, softmax, biases,
  residual adds and the loss are not counted (they are well under 1% at these sizes);
- a transformer layer over n tokens of width d with MLP width m costs 2*n*(4*d^2 + 2*d*m) for its
  q/k/v/out and MLP matmuls plus 4*n^2*d for attention (Q.K^T and A.V), whatever the mask:
  a masked-out score is still computed by a dense kernel;
- the ViT runs over its patches plus CLS; the patch embedding is a matmul over the patches;
- OpenVision 2's decoder runs over the K kept visual tokens (floor(N * keep_ratio)) plus the
  text_len - 1 = 127 caption positions, plus the projection of the K tokens; the vocabulary head
  runs over the 127 caption positions;
- OpenVision 1 (DESIGN.md §6) adds the image embedding head, the text encoder over one 80-token text,
  and a decoder over all N patch tokens + 79 alt-text tokens + 128 queries (plus both prefix
  projections), with the vocabulary head over the 128 queries;
- the CapPa-style variant is OpenVision 2 with K = N.

The one choice the published figures pin down is the text encoder's share in OpenVision 1: they
match when it is counted once per image, the usual CLIP convention of FLOPs per image-text pair
(open_clip's profiler does the same), and not twice, although a training step encodes two texts
per image (the alt-text and the sub-caption). Counted twice, OV1 comes out at 283.0 (L/14) and
1690.7 (So400m/14), 4.1% and 3.3% over the published 271.75 and 1636.75; counted once, at 269.2
and 1624.1 (-0.9%, -0.8%). OpenVision 2 comes out at 206.8 and 1009.7 against 208.90 and 1017.74
(-1.0%, -0.8%). `text_passes=2` gives the full training-step forward instead.

Decoders assumed where none is named are the recipes' (models/registry.py paper_decoder; DESIGN.md §2,
§5.4): the L decoder (768 wide, 12 deep) for L/14, the So400m-shaped decoder (1152 wide, 27 deep)
for So400m/14, H (1024 wide, 24 deep; unknown in the paper) for H/14 and g/14, and otherwise the
decoder of the encoder's own size class where one exists (Ti, S, M, B, G; mu and nano too), else L.
OpenVision 1's text encoder takes the decoder's size (DESIGN.md §6 lists the same shapes for both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError
from .models.config import ModelConfig
from .models.masking import num_kept
from .models.registry import Size, decoder_size, paper_decoder, parse_encoder_name

PARTS = ("encoder", "text_encoder", "decoder", "vocab_head")


def default_decoder(encoder: str) -> str:
    """The decoder the recipes assume for an encoder (models/registry.py paper_decoder)."""
    return paper_decoder(encoder)


def layer_matmul_params(size: Size) -> int:
    return 4 * size.width ** 2 + 2 * size.width * size.mlp_dim


def layer_params(size: Size) -> int:
    """q/k/v/out and MLP weights and biases, and two LayerNorms."""
    return layer_matmul_params(size) + 9 * size.width + size.mlp_dim


def transformer_flops(size: Size, tokens: int) -> int:
    """Forward FLOPs of size.depth layers over `tokens` positions."""
    per_layer = 2 * tokens * layer_matmul_params(size) + 4 * tokens ** 2 * size.width
    return size.depth * per_layer


@dataclass
class Count:
    """FLOPs and parameters of one model (a ModelConfig; text_passes as methods.count_flops's), per part."""

    config: ModelConfig
    text_passes: int = 1
    flops: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def to_dict(self) -> dict:
        s = self.config
        return {
            "method": s.method, "encoder": s.encoder, "decoder": s.decoder, "image_size": s.image_size,
            **({"text_encoder": s.text_encoder or s.decoder, "text_passes": self.text_passes}
               if self.params.get("text_encoder") else {"keep_ratio": s.keep_ratio}),
            "gflops_per_image": self.total_flops / 1e9,
            "gflops_per_part": {k: v / 1e9 for k, v in self.flops.items()},
            "params": self.total_params,
            "params_per_part": dict(self.params),
            **self.notes,
        }


def encoder_count(encoder: str, image_size: int) -> tuple[int, int, int, Size]:
    """(forward FLOPs, parameters, patch tokens, size) of the ViT of DESIGN.md §1.2."""
    size, patch = parse_encoder_name(encoder)
    if image_size < patch:
        raise UserError(f"image size {image_size} is smaller than the patch size {patch}")
    grid = image_size // patch
    patches = grid * grid
    patch_in = 3 * patch * patch
    flops = 2 * patches * patch_in * size.width + transformer_flops(size, patches + 1)
    # bias-free patch conv, CLS token, blocks, the pooled vector's LayerNorm
    params = patch_in * size.width + size.width + size.depth * layer_params(size) + 2 * size.width
    return flops, params, patches, size


def _start(config: ModelConfig, text_passes: int) -> tuple[Count, int, Size, Size, int]:
    """The encoder's part of a count: (count so far, patches, encoder size, decoder size, vocab)."""
    enc_flops, enc_params, patches, enc = encoder_count(config.encoder, config.image_size)
    result = Count(config, text_passes)
    result.flops["encoder"], result.params["encoder"] = enc_flops, enc_params
    return result, patches, enc, decoder_size(config.decoder), config.vocab_size


def _stack_params(dec: Size) -> int:
    return dec.depth * layer_params(dec) + 2 * dec.width  # blocks + final LayerNorm


def captioner_count(config: ModelConfig, text_passes: int = 1) -> Count:
    """OpenVision 2 and CapPa: the decoder over the kept visual tokens and the caption positions."""
    result, patches, enc, dec, vocab = _start(config, text_passes)
    kept = num_kept(patches, config.keep_ratio)
    positions = config.text_len - 1
    result.flops["text_encoder"], result.params["text_encoder"] = 0, 0
    result.flops["decoder"] = 2 * kept * enc.width * dec.width + transformer_flops(dec, kept + positions)
    result.params["decoder"] = (vocab * dec.width + enc.width * dec.width + _stack_params(dec)
                                + (positions * dec.width if config.text_pos == "learned" else 0))
    result.flops["vocab_head"] = 2 * positions * dec.width * vocab
    result.params["vocab_head"] = dec.width * vocab
    result.notes["decoder_tokens"] = {"visual": kept, "text": positions}
    return result


def openvision1_count(config: ModelConfig, text_passes: int = 1) -> Count:
    """OpenVision 1: the text encoder and image head, and the query decoder over every patch."""
    result, patches, enc, dec, vocab = _start(config, text_passes)
    txt = decoder_size(config.text_encoder or config.decoder)
    embed = config.embed_dim or txt.width
    alt, queries = config.alt_text_len, config.text_len
    text_flops = transformer_flops(txt, alt) + 2 * txt.width * embed
    # the image embedding head belongs to the contrastive branch, counted with the text encoder
    result.flops["text_encoder"] = text_passes * text_flops + 2 * enc.width * embed
    result.params["text_encoder"] = (vocab * txt.width + alt * txt.width + txt.depth * layer_params(txt)
                                     + 2 * txt.width + txt.width * embed + enc.width * embed + 1)
    prefix = patches + alt - 1
    result.flops["decoder"] = (2 * patches * enc.width * dec.width + 2 * (alt - 1) * txt.width * dec.width
                               + transformer_flops(dec, prefix + queries))
    result.params["decoder"] = (enc.width * dec.width + txt.width * dec.width + queries * dec.width
                                + _stack_params(dec))
    result.flops["vocab_head"] = 2 * queries * dec.width * vocab
    result.params["vocab_head"] = dec.width * vocab
    result.notes["decoder_tokens"] = {"visual": patches, "alt_text": alt - 1, "queries": queries}
    return result


# The paper's FLOPs/image (DESIGN.md §5.1): (method, encoder, resolution) -> GFLOPs.
PUBLISHED_GFLOPS = {
    ("openvision2", "L/14", 224): 208.90,
    ("openvision1", "L/14", 224): 271.75,
    ("openvision2", "So400m/14", 384): 1017.74,
    ("openvision1", "So400m/14", 384): 1636.75,
}
