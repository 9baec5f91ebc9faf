"""The training configuration: one flat dataclass, filled by a named preset and `key=value` overrides."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields

from ..errors import UserError
from ..models import ModelConfig


@dataclass
class TrainConfig:
    # --- model (SPEC §1-3) ---
    method: str = "openvision2"
    encoder: str = "L/14"
    decoder: str = "L"
    image_size: int = 224
    keep_ratio: float = 0.35
    decoder_mask: str = "causal"
    text_pos: str = "none"
    text_len: int = 128
    # --- tokenizer: "wordpiece" (OpenVision's BERT ids, 32k head) or "bpe" (trained on the captions) ---
    tokenizer: str = "wordpiece"
    tokenizer_path: str = ""  # a BERT vocab.txt / tokenizer.json; empty = the bundled one
    bpe_vocab_size: int = 256
    # --- data ---
    dataset: str = "synthetic"
    train_samples: int = 100_000  # size of the embedded dataset's train split
    val_samples: int = 256  # held-out images for the validation loss and the printed captions
    num_workers: int = 1
    # --- optimisation (SPEC §4.4, §4.5) ---
    batch_size: int = 256
    steps: int = 1000
    warmup_steps: int = 100
    base_lr: float = 8e-6  # peak LR = base_lr * batch_size / 256
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    caption_loss_weight: float = 2.0  # the release scales the loss by 2; reported losses are unscaled
    precision: str = "auto"  # "auto": bf16 autocast where bf16 matmuls are fast, else fp32; or "bf16"/"fp32"
    seed: int = 0
    # --- bookkeeping ---
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    show_captions: int = 8  # held-out images printed with their captions at the end

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    def model_config(self, vocab_size: int, pad_id: int) -> ModelConfig:
        return ModelConfig(encoder=self.encoder, decoder=self.decoder, image_size=self.image_size,
                           keep_ratio=self.keep_ratio, decoder_mask=self.decoder_mask, text_pos=self.text_pos,
                           vocab_size=vocab_size, text_len=self.text_len, pad_id=pad_id)

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_value(key: str, text: str, kind: type):
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"override {key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        name = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise UserError(f"override {key}={text}: expected {name}") from None


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings, checking that each key exists and each value has the field's type."""
    types = {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(config)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form key=value")
        if key not in types:
            close = difflib.get_close_matches(key, types, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `ov2 train --list-keys` shows them"
            raise UserError(f"unknown override key {key!r}{hint}")
        setattr(config, key, _parse_value(key, value, types[key]))
    return config
