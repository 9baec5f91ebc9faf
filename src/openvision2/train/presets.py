"""Named training presets. Each is a function returning a complete TrainConfig; its docstring says
what it is for. `ov2 train --preset NAME key=value ...` starts from one and overrides fields."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .config import TrainConfig

PRESETS: dict[str, Callable[[], TrainConfig]] = {}


def preset(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    PRESETS[fn.__name__.replace("_", "-")] = fn
    return fn


@preset
def tiny_cpu() -> TrainConfig:
    """The default: a ~1M-parameter model on the embedded dataset, a few minutes on 2 CPU cores.
    Same method as the paper (keep 35% of visual tokens, causal decoder, token-mean loss), shrunk."""
    return TrainConfig(
        encoder="nano/8", decoder="nano", image_size=64, text_len=40,
        tokenizer="bpe", bpe_vocab_size=256, train_samples=100_000,
        batch_size=64, steps=1200, warmup_steps=60, base_lr=4e-4 * 256 / 64,
        weight_decay=0.05, log_every=10, eval_every=200, ckpt_every=400,
    )


@preset
def l14_stage1() -> TrainConfig:
    """The paper's ViT-L/14 stage 1 (SPEC §4.3): 84 px, batch 32768, 12.8B samples (390,981 steps),
    warmup 1,563 steps, peak LR 8e-6 x 32768/256 = 1.024e-3, keep 0.35, L decoder, WordPiece.
    Needs a GPU cluster and a real corpus; on the embedded dataset it only shows the shapes run."""
    return TrainConfig(
        encoder="L/14", decoder="L", image_size=84, text_len=128, tokenizer="wordpiece",
        batch_size=32768, steps=390_981, warmup_steps=1_563, base_lr=8e-6,
        weight_decay=0.2, log_every=50, eval_every=5000, ckpt_every=5000,
    )


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]()
