"""ModelConfig: the one declaration of every model field, for every method (DESIGN.md §1-3, §5.3, §6).

It is the `model` section of a training config, what `ov2 flops` and `ov2 bench` count and build,
and what a checkpoint's config.json stores beside the weights; `method` says which model class
rebuilds it (openvision2/methods.py). Fields a method does not use are ignored by it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import UserError
from ..options import check_fields, option
from .registry import DECODER_SIZES, decoder_size, parse_encoder_name

# The methods a config may name: each has its entry in the registry (methods.py), which sits above the
# models and is never imported from here, so a config is checked without building anything.
METHOD_NAMES = ("openvision2", "openvision1", "cappa")
NO_DECODER = "none"  # ModelConfig.decoder for an encoder-only model
DECODER_MASKS = ("causal", "prefix")
TEXT_POSITIONS = ("none", "learned")
# Sizes beyond any real model: a typo (text_len=100000) gets one line, not a kernel OOM kill.
MAX_IMAGE_SIZE, MAX_TEXT_LEN = 4096, 2048


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; saved as config.json beside the weights."""

    method: str = option("openvision2", "which model: openvision2, openvision1 (DESIGN.md §6) or cappa (DESIGN.md §5.3)",
                         choices=METHOD_NAMES)
    encoder: str = option("L/14", "ViT size/patch, e.g. L/14, S/16, nano/16 (DESIGN.md §1.1)")
    decoder: str = option("L", "caption decoder size (DESIGN.md §2); none = an encoder-only model")
    image_size: int = option(224, "image side in pixels", low=1, high=MAX_IMAGE_SIZE, high_open=False)
    keep_ratio: float = option(0.35, "fraction of the encoder's output tokens the decoder sees in training",
                               low=0.0, low_open=True, high=1.0, high_open=False)
    eval_keep_ratio: float = option(
        0.0, "fraction of the visual tokens the decoder sees at evaluation (captions, zero-shot, held-out loss), "
             "one seeded subset; 0 = keep_ratio, as the release does (docs/BENCHMARKS.md)", low=0.0, high=1.0,
        high_open=False)
    decoder_mask: str = option("causal", "causal as released, or prefix (visual tokens bidirectional)",
                               choices=DECODER_MASKS)
    text_pos: str = option("none", "decoder text positions: none as released, or learned", choices=TEXT_POSITIONS)
    vocab_size: int = option(32000, "vocabulary size (set from the tokenizer)", low=1, derived=True)
    text_len: int = option(128, "caption sequence length including the trailing [CLS] (DESIGN.md §3.2)", low=3,
                           high=MAX_TEXT_LEN, high_open=False)
    pad_id: int = option(0, "[pad] id (set from the tokenizer)", low=0, derived=True)
    # Encoder options beyond the paper (default = the paper's ViT): a LayerNorm before the blocks
    # (what HF CLIPVisionModel / LLaVA-1.5 need) and no CLS token (what SiglipVisionModel needs).
    pre_norm: bool = option(False, "LayerNorm before the encoder blocks (for an hf-clip / LLaVA-1.5 export)")
    class_token: bool = option(True, "encoder CLS token (false for an hf-siglip export)")
    # The training loss applies the vocabulary head in chunks of tokens, never holding the full
    # [tokens, vocab] logits (models/chunked_ce.py); the same loss and gradients. CUDA runs its own
    # 4,096-token chunks with a compiled body (chunked_ce.loss_path).
    logits_chunk: int = option(512, "tokens per chunk of the vocabulary head + cross-entropy on a CPU (CUDA: "
                                    "4096); 0 = full logits", low=0)
    # --- OpenVision 1 (DESIGN.md §6) ---
    text_encoder: str = option("", "OpenVision 1's text encoder size; empty = the decoder's size")
    alt_text_len: int = option(80, "OpenVision 1's alt-text / sub-caption length, [CLS] included", low=3,
                               high=MAX_TEXT_LEN, high_open=False)
    embed_dim: int = option(0, "OpenVision 1's contrastive width; 0 = the text encoder's width", low=0)
    clip_loss_weight: float = option(1.0, "OpenVision 1's weight of the contrastive loss", low=0.0)
    max_logit_scale: float = option(0.0, "OpenVision 1's logit-scale clamp: 0 = none, as released; 100 = CLIP's",
                                    low=0.0)
    # --- CapPa (DESIGN.md §5.3, §10.1) ---
    parallel_prob: float = option(0.0, "CapPa: share of examples predicted in parallel from [MASK] inputs",
                                  low=0.0, high=1.0, high_open=False)
    mask_id: int = option(103, "CapPa's [MASK] id (set from the tokenizer)", low=0, derived=True)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "ModelConfig":
        check_fields(self)
        parse_encoder_name(self.encoder)
        if self.decoder != NO_DECODER:
            decoder_size(self.decoder)
        if self.text_encoder:
            decoder_size(self.text_encoder)
        if self.parallel_prob > 0 and self.text_pos == "none":
            raise UserError("parallel prediction needs text positions: set text_pos=learned")
        if self.parallel_prob > 0 and not self.mask_id < self.vocab_size:
            raise UserError(f"mask_id {self.mask_id} is outside the vocabulary of {self.vocab_size}")
        return self

    @property
    def decoding_keep_ratio(self) -> float:
        """The fraction of visual tokens the decoder sees at evaluation."""
        return self.eval_keep_ratio or self.keep_ratio

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """From a config.json's "model" (fields of other versions are ignored; a missing method is
        OpenVision 2, as every config.json written before methods were recorded that had none)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["DECODER_MASKS", "DECODER_SIZES", "METHOD_NAMES", "ModelConfig", "NO_DECODER", "TEXT_POSITIONS"]
