"""OpenVision 2 in PyTorch: caption-only pretraining of ViT image encoders (arXiv 2509.01644)."""

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import UserError
from .generate import greedy_caption
from .models import ModelConfig, OpenVision2, create_encoder
from .tokenizer import CaptionTokenizer

__version__ = "0.1.0"
__all__ = ["CaptionTokenizer", "ModelConfig", "OpenVision2", "UserError", "create_encoder", "create_model",
           "greedy_caption", "load_checkpoint", "save_checkpoint"]


def create_model(encoder: str = "L/14", method: str = "openvision2", **config):
    """A model by encoder name and method (openvision2, openvision1 or cappa; methods.py), e.g.
    create_model("L/14", decoder="L", image_size=224) or create_model("S/16", method="cappa");
    any ModelConfig field may be given."""
    from .methods import build_model

    return build_model(ModelConfig(encoder=encoder, method=method, **config))
