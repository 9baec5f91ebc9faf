"""OpenVision 2 in PyTorch: caption-only pretraining of ViT image encoders (arXiv 2509.01644).

The names below are imported on first use (PEP 562), so `import openvision2` and the `ov2` command's
help and argument errors do not pay for importing torch and timm.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "CaptionTokenizer": "tokenizer",
    "Checkpoint": "checkpoint",
    "ModelConfig": "models",
    "OpenVision2": "models",
    "UserError": "errors",
    "caption": "generate",
    "create_encoder": "models",
    "from_pretrained": "checkpoint",
    "greedy_caption": "generate",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
}
__all__ = sorted([*_LAZY, "create_model", "generate"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    # A submodule, as when this file imported them all: `openvision2.models`, and `openvision2.generate`,
    # which is callable as generate.generate (see generate.py).
    try:
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def create_model(encoder: str = "L/14", method: str = "openvision2", **config):
    """A model by encoder name and method (openvision2, openvision1 or cappa; methods.py), e.g.
    create_model("L/14", decoder="L", image_size=224) or create_model("S/16", method="cappa");
    any ModelConfig field may be given."""
    from .methods import build_model
    from .models import ModelConfig

    return build_model(ModelConfig(encoder=encoder, method=method, **config))
