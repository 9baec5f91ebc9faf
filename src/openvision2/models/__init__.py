"""The OpenVision 2 model family: encoders by name, the caption decoder, the full model."""

from .decoder import CaptionDecoder
from .masking import keep_random_tokens, num_kept
from .openvision2 import ModelConfig, OpenVision2, caption_targets
from .registry import DECODER_SIZES, ENCODER_SIZES, PUBLISHED_ENCODERS
from . import timm_models  # registers the family with timm
from .vit import OpenVisionViT, create_encoder

__all__ = ["CaptionDecoder", "DECODER_SIZES", "ENCODER_SIZES", "ModelConfig", "OpenVision2", "OpenVisionViT",
           "PUBLISHED_ENCODERS", "caption_targets", "create_encoder", "keep_random_tokens", "num_kept"]
