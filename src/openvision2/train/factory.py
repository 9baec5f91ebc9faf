"""Which model a training run builds, by the config's `method`. Every method's model takes
(images, **tensor fields of the batch) and returns a dict with at least "loss", "nll_sum" and
"num_tokens", so the loop is the same for all of them."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..tokenizer import CaptionTokenizer
from .config import TrainConfig

METHODS = ("openvision2", "openvision1", "cappa")


def build_model(config: TrainConfig, tokenizer: CaptionTokenizer, device=None) -> nn.Module:
    if config.method == "openvision2":
        from ..models import OpenVision2

        return OpenVision2(config.model_config(tokenizer.vocab_size, tokenizer.pad_id), device=device)
    if config.method == "openvision1":
        from ..models.openvision1 import OpenVision1

        return OpenVision1(openvision1_config(config, tokenizer), device=device)
    if config.method == "cappa":
        from ..models.cappa import CapPa

        return CapPa(cappa_config(config, tokenizer), device=device)
    raise UserError(f"unknown method {config.method!r}: use one of {', '.join(METHODS)}")


def openvision1_config(config: TrainConfig, tokenizer: CaptionTokenizer):
    """OpenVision 1 (DESIGN.md §6) at the run's sizes; its loss weights are the run's, so that the loop's
    scaling by caption_loss_weight gives clip_loss_weight * contrastive + caption_loss_weight * caption."""
    from ..models.openvision1 import OpenVision1Config

    return OpenVision1Config(encoder=config.encoder, text_encoder=config.text_encoder or config.decoder,
                             decoder=config.decoder, image_size=config.image_size, vocab_size=tokenizer.vocab_size,
                             text_len=config.text_len, alt_text_len=config.alt_text_len,
                             caption_loss_weight=config.caption_loss_weight, pad_id=tokenizer.pad_id,
                             max_logit_scale=config.max_logit_scale)


def cappa_config(config: TrainConfig, tokenizer: CaptionTokenizer):
    """OpenVision 2 without token masking: keep_ratio is 1 whatever the run says (DESIGN.md §5.3)."""
    from ..models.cappa import CapPaConfig

    base = config.model_config(tokenizer.vocab_size, tokenizer.pad_id).to_dict()
    mask_id = tokenizer.tokenizer.token_to_id("[MASK]")
    if mask_id is None:  # the small BPE has no [MASK]; [UNK] never occurs in its own training captions
        mask_id = tokenizer.tokenizer.token_to_id("[UNK]")
    return CapPaConfig(**{**base, "keep_ratio": 1.0, "eval_keep_ratio": 1.0}, parallel_prob=config.parallel_prob, mask_id=mask_id)
