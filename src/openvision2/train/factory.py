"""The model a training run builds: its config's model section, with the tokenizer's vocabulary, by
the method registry (methods.py). Every method's model takes (images, **tensor fields of the batch)
and returns nll_sum, num_tokens, loss and optionally aux_loss (models/losses.py), so the loop is the
same for all of them."""

from __future__ import annotations

from torch import nn

from ..methods import build_model as build_from_model_config, for_tokenizer
from ..models.config import ModelConfig
from ..tokenizer import CaptionTokenizer


def build_model(model: ModelConfig, tokenizer: CaptionTokenizer, device=None) -> nn.Module:
    return build_from_model_config(for_tokenizer(model, tokenizer), device=device)
