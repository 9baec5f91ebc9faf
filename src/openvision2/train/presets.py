"""Named training presets. Each is a function returning a complete TrainConfig; its docstring says
what it is for. `ov2 train --preset NAME key=value ...` starts from one and overrides fields."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .config import TrainConfig

PRESETS: dict[str, Callable[[], TrainConfig]] = {}

# The paper's data (DESIGN.md §3.2, §4.1): shards of the recaptioned DataComp-1B, the ReCap-DataComp-1B v2
# caption key (v1 has re_caption instead), a 250,000-sample shuffle buffer; no embedded dataset.
PAPER_DATA = dict(dataset="shards", caption_key="llava_llama3_condition_True_dense_weighted_topk",
                  shuffle_buffer=250_000, allow_embedded=False)


def preset(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    PRESETS[fn.__name__.replace("_", "-")] = fn
    return fn


@preset
def tiny_cpu() -> TrainConfig:
    """The default: a 1.3M-parameter model on the embedded dataset, a few minutes on 2 CPU cores.
    Same method as the paper (keep 35% of visual tokens, causal decoder, token-mean loss), shrunk:
    64 px images in 16 px patches (16 tokens, 5 kept), a BPE fitted to the captions. precision=auto
    uses bf16 autocast where it is fast (a deviation for speed); precision=fp32 is the release's."""
    return TrainConfig(
        encoder="nano/16", decoder="nano", image_size=64, text_len=32,
        tokenizer="bpe", bpe_vocab_size=256, train_samples=100_000,
        batch_size=64, steps=1500, warmup_steps=60, base_lr=1.6e-3,
        weight_decay=0.05, log_every=10, eval_every=500, ckpt_every=500,
    )


@preset
def tiny_cpu_ov1() -> TrainConfig:
    """The OpenVision 1 baseline (DESIGN.md §6) at tiny-cpu's sizes: same encoder, plus a nano text encoder,
    CLIP losses on the alt-text and one caption sentence, and a 40-query parallel caption decoder."""
    config = tiny_cpu()
    config.method, config.text_encoder, config.alt_text_len = "openvision1", "nano", 24
    return config


@preset
def tiny_cpu_cappa() -> TrainConfig:
    """The CapPa-style ablation (DESIGN.md §5.3, §10.1) at tiny-cpu's sizes: no visual-token masking, and
    75% of captions predicted in parallel from [MASK] inputs (needs learned text positions)."""
    config = tiny_cpu()
    config.method, config.keep_ratio, config.parallel_prob, config.text_pos = "cappa", 1.0, 0.75, "learned"
    return config


@preset
def fashion_mnist_cpu() -> TrainConfig:
    """tiny-cpu's method on Fashion-MNIST shards (`ov2 shards --fashion-mnist --out data/fashion-mnist`):
    32 px in 8 px patches (16 tokens, 5 kept), DESIGN.md §4.2 augmentations, one caption template drawn per
    visit; `ov2 caption-accuracy` then scores the test captions by the class they name."""
    return TrainConfig(
        encoder="nano/8", decoder="nano", image_size=32, text_len=24, tokenizer="bpe", bpe_vocab_size=256,
        dataset="shards", train_shards="data/fashion-mnist/train-{000000..000005}.tar",
        val_shards="data/fashion-mnist/test-000000.tar", caption_key="captions", shuffle_buffer=20_000,
        val_samples=256, batch_size=128, steps=800, warmup_steps=40, base_lr=1.6e-3,
        weight_decay=0.05, log_every=10, eval_every=250, ckpt_every=500, eval_task="fashion-mnist",
    )


@preset
def l14_stage1() -> TrainConfig:
    """The paper's ViT-L/14 stage 1 (DESIGN.md §4.3): 84 px, batch 32768, 12.8B samples (390,981 steps),
    warmup 1,563 steps, peak LR 8e-6 x 32768/256 = 1.024e-3, keep 0.35, L decoder, WordPiece, the
    paper's data (train_shards=... of the recaptioned corpus; allow_embedded=true dataset=synthetic
    only shows the shapes run). Needs a GPU cluster. precision=fp32 is the faithful setting (the
    release trains in float32); the default auto picks bf16 autocast on GPUs, a deviation."""
    return TrainConfig(
        encoder="L/14", decoder="L", image_size=84, text_len=128, tokenizer="wordpiece",
        batch_size=32768, steps=390_981, warmup_steps=1_563, base_lr=8e-6,
        weight_decay=0.2, log_every=50, eval_every=5000, ckpt_every=5000, **PAPER_DATA,
    )


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]()
