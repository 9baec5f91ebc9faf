"""Named training presets. Each is a function returning a complete TrainConfig; its docstring says
what it is for, and what it gives and costs (as measured in docs/BENCHMARKS.md, or "not measured").
`ov2 train --preset NAME key=value ...` starts from one and overrides fields.

The paper's stages (DESIGN.md §4.3) are written once, in paper_stage(): the l14-stage1 preset is its
pretraining stage, and the recipes (train/recipes.py) chain its stages."""

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
    """The default: a 1.3M-parameter model on the embedded dataset, a few minutes on 2 CPU cores.
    Same method as the paper (keep 35% of visual tokens, causal decoder, token-mean loss), shrunk:
    64 px images in 16 px patches (16 tokens, 5 kept), a BPE fitted to the captions. precision=auto
    uses bf16 autocast where it is fast (a deviation for speed); precision=fp32 is the release's.
    Expect, evaluating with 35% of the tokens as in training (eval_keep_ratio): held-out caption loss
    5.54 -> ~0.29, zero-shot top-1 ~0.70 (top-5 1.00, 30 classes), CIDEr ~5.6 after 1500 steps; ~7 min
    wall on 2 quiet CPU cores (docs/BENCHMARKS.md, "The default run" and "What the decoder sees")."""
    return TrainConfig(
        encoder="nano/16", decoder="nano", image_size=64, text_len=32,
        tokenizer="bpe", bpe_vocab_size=256, train_samples=100_000,
        batch_size=64, steps=1500, warmup_steps=60, base_lr=1.6e-3,
        weight_decay=0.05, log_every=10, eval_every=500, ckpt_every=500,
    )


@preset
def tiny_cpu_ov1() -> TrainConfig:
    """The OpenVision 1 baseline (DESIGN.md §6) at tiny-cpu's sizes: same encoder, plus a nano text encoder,
    CLIP losses on the alt-text and one caption sentence, and a 40-query parallel caption decoder.
    Expect: a falling held-out caption loss (full-length figures not measured); a training step
    costs ~1.5x tiny-cpu's (docs/BENCHMARKS.md, OV1 vs OV2 step times)."""
    config = tiny_cpu()
    config.method, config.text_encoder, config.alt_text_len = "openvision1", "nano", 24
    return config


@preset
def tiny_cpu_cappa() -> TrainConfig:
    """The CapPa-style ablation (DESIGN.md §5.3, §10.1) at tiny-cpu's sizes: no visual-token masking, and
    75% of captions predicted in parallel from [MASK] inputs (needs learned text positions).
    Expect: a falling held-out caption loss (full-length figures not measured); the decoder reads all
    16 visual tokens, so a step costs a little more than tiny-cpu's."""
    config = tiny_cpu()
    config.method, config.keep_ratio, config.parallel_prob, config.text_pos = "cappa", 1.0, 0.75, "learned"
    return config


@preset
def fashion_mnist_cpu() -> TrainConfig:
    """tiny-cpu's method on Fashion-MNIST shards (`ov2 shards --fashion-mnist --out data/fashion-mnist`):
    32 px in 8 px patches (16 tokens, 5 kept), DESIGN.md §4.2 augmentations, one caption template drawn per
    visit; `ov2 caption-accuracy` then scores the test captions by the class they name.
    Expect: held-out caption loss 5.09 -> ~0.32, zero-shot top-1 ~0.50 at step 500, 74% caption
    accuracy on the 10 000 test images after 800 steps; ~6 min on 2 CPU cores (docs/BENCHMARKS.md)."""
    return TrainConfig(
        encoder="nano/8", decoder="nano", image_size=32, text_len=24, tokenizer="bpe", bpe_vocab_size=256,
        dataset="shards", train_shards="data/fashion-mnist/train-{000000..000005}.tar",
        val_shards="data/fashion-mnist/test-000000.tar", caption_key="captions", shuffle_buffer=20_000,
        val_samples=256, batch_size=128, steps=800, warmup_steps=40, base_lr=1.6e-3,
        weight_decay=0.05, log_every=10, eval_every=250, ckpt_every=500, eval_task="fashion-mnist",
    )


# The paper's data (DESIGN.md §3.2, §4.1): shards of the recaptioned DataComp-1B, the ReCap-DataComp-1B v2
# caption key (v1 has re_caption instead), a 250,000-sample shuffle buffer; no embedded dataset.
PAPER_DATA = dict(dataset="shards", caption_key="llava_llama3_condition_True_dense_weighted_topk",
                  shuffle_buffer=250_000, allow_embedded=False)

# The paper's stages for a /14 encoder (DESIGN.md §4.3; 1 ep = 1,281,167 samples, steps = floor(ep x
# 1,281,167 / batch)): (batch, epochs, warmup epochs, base_lr). High-res is inferred (OV1's script).
EPOCH = 1_281_167  # one virtual ImageNet epoch, in samples
PAPER_STAGES = {"pretrain": (32768, 10_000, 40, 8e-6), "finetune": (16384, 800, 20, 4e-7),
                "highres": (8192, 200, 0, 1e-7)}


def _epochs_to_steps(epochs: float, batch: int) -> int:
    return int(epochs * EPOCH // batch)


def paper_stage(kind: str, encoder: str, decoder: str, image_size: int) -> TrainConfig:
    """One of the paper's stages for a /14 encoder on GPUs (FSDP2, bf16, selective checkpointing, the
    micro-batch that fits each GPU: train/batching.py), with the paper's data (PAPER_DATA: give train_shards=...). precision=fp32 is the faithful setting (the
    release trains in float32); bf16 autocast is a deviation for speed and memory."""
    batch, epochs, warmup_epochs, base_lr = PAPER_STAGES[kind]
    return TrainConfig(
        encoder=encoder, decoder=decoder, image_size=image_size, text_len=128, tokenizer="wordpiece",
        batch_size=batch, steps=_epochs_to_steps(epochs, batch), warmup_steps=_epochs_to_steps(warmup_epochs, batch),
        base_lr=base_lr, weight_decay=0.2, log_every=50, eval_every=5000, ckpt_every=2000, keep_checkpoints=3,
        parallel="fsdp", activation_checkpointing="selective", meta_init=True, precision="bf16", num_workers=8,
        micro_batch="auto",  # the largest per GPU that fits its memory; accumulation makes up the batch
        **PAPER_DATA,
    )


@preset
def l14_stage1() -> TrainConfig:
    """The paper's ViT-L/14 stage 1 (DESIGN.md §4.3), the l14 recipe's first stage: 84 px, batch 32768,
    12.8B samples (390,981 steps), warmup 1,563 steps, peak LR 8e-6 x 32768/256 = 1.024e-3, keep 0.35,
    L decoder, WordPiece; FSDP2, bf16, selective activation checkpointing, built on the meta device.
    Needs a GPU cluster (torchrun) and the recaptioned corpus (train_shards=...; the paper's caption key
    and 250,000 shuffle buffer are set); allow_embedded=true dataset=synthetic only shows the shapes run.
    precision=fp32 is the release's; bf16 is a deviation for speed. Expect: the paper's stage-1 encoder (its figures are after stage 2); cost
    ~209 GFLOPs/image forward at 224 px (`ov2 flops`), 12.8B samples at 84 px (not measured here)."""
    return paper_stage("pretrain", "L/14", "L", 84)


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]()
