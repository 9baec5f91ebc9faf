"""OpenVision 2 in PyTorch: caption-only pretraining of ViT image encoders (arXiv 2509.01644)."""

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import UserError
from .generate import greedy_caption
from .models import ModelConfig, OpenVision2, create_encoder
from .tokenizer import CaptionTokenizer

__version__ = "0.1.0"
__all__ = ["CaptionTokenizer", "ModelConfig", "OpenVision2", "UserError", "create_encoder", "create_model",
           "greedy_caption", "load_checkpoint", "save_checkpoint"]


def create_model(encoder: str = "L/14", **config) -> OpenVision2:
    """An OpenVision 2 model by encoder name, e.g. create_model("L/14", decoder="L", image_size=224);
    any ModelConfig field may be given."""
    return OpenVision2(ModelConfig(encoder=encoder, **config))
