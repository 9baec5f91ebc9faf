"""Named sizes of the encoder and decoder families (DESIGN.md §1.1, §2).

Encoder names are "<size>/<patch>", e.g. "L/14" or "S/16"; any patch size may be asked for
(the paper also trains "/8" variants). Decoder names are the size alone, e.g. "L".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Size:
    width: int
    depth: int
    heads: int
    mlp_dim: int


# DESIGN.md §1.1 (src/models/vit.py decode_variant), plus tiny sizes for CPU runs and tests.
ENCODER_SIZES: dict[str, Size] = {
    "mu": Size(32, 1, 2, 128),  # unit tests
    "nano": Size(128, 4, 4, 512),  # the CPU default
    "Ti": Size(192, 12, 3, 768),
    "S": Size(384, 12, 6, 1536),
    "M": Size(512, 12, 8, 2048),
    "B": Size(768, 12, 12, 3072),
    "L": Size(1024, 24, 16, 4096),
    "So400m": Size(1152, 27, 16, 4304),
    "H": Size(1280, 32, 16, 5120),
    "g": Size(1408, 40, 16, 6144),
    "G": Size(1664, 48, 16, 8192),
}

# Patch sizes of the published encoders; other patch sizes are accepted too.
PUBLISHED_ENCODERS = ("Ti/16", "S/16", "B/16", "L/14", "So400m/14", "H/14", "g/14")

# DESIGN.md §2 (src/models/text_decoder_v2.py decode_variant). "So400m" is OV1's So400m-shaped
# decoder, which the published So400m FLOPs imply (DESIGN.md §2, §5.4).
DECODER_SIZES: dict[str, Size] = {
    "mu": Size(32, 1, 2, 128),
    "nano": Size(128, 2, 4, 512),
    "Ti": Size(192, 12, 3, 768),
    "S": Size(384, 12, 6, 1536),
    "M": Size(512, 12, 8, 2048),
    "B": Size(512, 12, 8, 2048),
    "L": Size(768, 12, 12, 3072),
    "So400m": Size(1152, 27, 16, 4304),
    "H": Size(1024, 24, 16, 4096),
    "G": Size(1664, 48, 16, 8192),
}


# The decoder assumed for each published encoder size, by the recipes and `ov2 flops` alike:
# L -> L and So400m -> So400m-shaped are inferred from the published FLOPs (DESIGN.md §2, §5.4); the
# decoders of H/14 and g/14 are unknown (DESIGN.md §12) and taken as H (1024 x 24).
PAPER_DECODERS = {"L": "L", "So400m": "So400m", "H": "H", "g": "H"}


def paper_decoder(encoder: str) -> str:
    """The decoder for an encoder name: the paper's where PAPER_DECODERS has it, else the decoder of
    the encoder's own size class where one exists (Ti, S, M, B, G, mu, nano), else L."""
    size = encoder.partition("/")[0]
    return PAPER_DECODERS.get(size) or (size if size in DECODER_SIZES else "L")


def parse_encoder_name(name: str) -> tuple[Size, int]:
    """"L/14" -> (Size of L, 14). Raises UserError with the known names otherwise."""
    size, sep, patch = name.partition("/")
    if not sep or size not in ENCODER_SIZES or not patch.isdigit() or int(patch) < 1:
        known = ", ".join(f"{s}/<patch>" for s in ENCODER_SIZES)
        raise UserError(f"unknown encoder {name!r}: use one of {known} (e.g. L/14, S/16)")
    return ENCODER_SIZES[size], int(patch)


def decoder_size(name: str) -> Size:
    if name not in DECODER_SIZES:
        raise UserError(f"unknown decoder {name!r}: use one of {', '.join(DECODER_SIZES)}")
    return DECODER_SIZES[name]
