"""Which model a training run builds, by the config's `method`. Every method's model takes
(images, **tensor fields of the batch) and returns a dict with at least "loss", "nll_sum" and
"num_tokens", so the loop is the same for all of them."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..tokenizer import CaptionTokenizer
from .config import TrainConfig

METHODS = ("openvision2",)


def build_model(config: TrainConfig, tokenizer: CaptionTokenizer, device=None) -> nn.Module:
    if config.method == "openvision2":
        from ..models import OpenVision2

        return OpenVision2(config.model_config(tokenizer.vocab_size, tokenizer.pad_id), device=device)
    raise UserError(f"unknown method {config.method!r}: use one of {', '.join(METHODS)}")
