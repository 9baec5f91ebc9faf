"""The method registry: one entry per training method, which every place that treats methods
differently indexes (the model factory, checkpoint loading, the batch, decoding, FLOPs, `ov2 bench`).

A method is chosen by ModelConfig.method, which each config.json records. Adding a method is one
`register(Method(...))` with its config class, model class, the batch fields it needs beside images
and captions (data/build.py CaptionCollate), how it captions, and its analytic FLOPs (flops.py), and its
name in models/config.py METHOD_NAMES (what a config may name, checked without building anything).
This module sits above the models and flops.py: they never look methods up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import flops
from .errors import UserError
from .models.cappa import CapPa, CapPaConfig
from .models.config import ModelConfig
from .models.openvision1 import OpenVision1, OpenVision1Config
from .models.openvision2 import OpenVision2

AUTOREGRESSIVE = "autoregressive"  # left to right, with greedy, beam and sampled decoding (generate.py)
PARALLEL = "parallel"  # every position at once from learned queries (OpenVision 1); greedy only


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    config_class: type
    model_class: Callable[..., object]
    flops: Callable  # (ModelConfig, text_passes) -> flops.Count
    batch_fields: tuple[str, ...] = ()
    decoding: str = AUTOREGRESSIVE
    train_text_passes: int = 0  # texts per image through a text encoder in a training step (FLOPs)
    fixed: dict = field(default_factory=dict)  # model fields the method sets whatever the run says

    @property
    def has_text_encoder(self) -> bool:
        return self.train_text_passes > 0

    def model_config(self, config) -> object:
        """config (a ModelConfig) as this method builds it: its class, its fixed fields applied."""
        data = {**config.to_dict(), **self.fixed, "method": self.name}
        return self.config_class.from_dict(data)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]


def all_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def method_of(model) -> Method:
    """The registry entry of a built model (by its config's method)."""
    return get_method(getattr(model.config, "method", "openvision2"))


def build_model(config, device=None):
    """The model of a ModelConfig, by its method (on `device`; "meta" builds without initialising)."""
    method = get_method(config.method)
    return method.model_class(method.model_config(config), device=device)


def for_tokenizer(config, tokenizer):
    """The ModelConfig with the tokenizer's vocabulary size and [pad] / [MASK] ids filled in."""
    mask_id = tokenizer.tokenizer.token_to_id("[MASK]")
    if mask_id is None:  # the small BPE has no [MASK]; [UNK] never occurs in its own training captions
        mask_id = tokenizer.tokenizer.token_to_id("[UNK]")
    return replace(config, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=mask_id)


def count_flops(config, text_passes: int = 1) -> flops.Count:
    """The analytic count of a model (flops.py), by its method; text_passes: texts per image through a
    text encoder (OpenVision 1: 1 as the paper counts, 2 in a training step)."""
    method = get_method(config.method)
    config = method.model_config(config)
    if config.image_size < 1:
        raise UserError(f"image size must be positive, got {config.image_size}")
    return method.flops(config, text_passes)


register(Method("openvision2", "the paper: keep 35% of the visual tokens, causal caption decoder",
                ModelConfig, OpenVision2, flops.captioner_count))
register(Method("openvision1", "the DESIGN.md §6 baseline: text encoder, CLIP losses, parallel caption decoder",
                OpenVision1Config, OpenVision1, flops.openvision1_count,
                batch_fields=("alt_captions", "sub_captions"), decoding=PARALLEL, train_text_passes=2))
register(Method("cappa", "the DESIGN.md §5.3 ablation: every visual token kept, optional parallel prediction",
                CapPaConfig, CapPa, flops.captioner_count, fixed={"keep_ratio": 1.0}))
