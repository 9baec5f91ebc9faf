"""Shared pieces of the interop tests: tiny models with every weight randomised (so a swapped or
missing tensor shows), written as checkpoints, and a random image batch."""

from __future__ import annotations

import torch

from openvision2.checkpoint import save_checkpoint
from openvision2.data.synthetic import SyntheticCaptions
from openvision2.models import ModelConfig, OpenVision2
from openvision2.preprocess import normalize
from openvision2.tokenizer import CaptionTokenizer

IMAGE_SIZE = 32
TOL = 1e-5  # the bound: max abs difference in fp32


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return module


def tiny_model(seed: int = 0, **options) -> tuple[OpenVision2, CaptionTokenizer]:
    tokenizer = CaptionTokenizer.train_bpe(SyntheticCaptions(100, image_size=IMAGE_SIZE).captions(), vocab_size=48)
    torch.manual_seed(seed)
    config = ModelConfig(encoder="mu/8", decoder="mu", image_size=IMAGE_SIZE, vocab_size=tokenizer.vocab_size,
                         text_len=12, **options)
    return randomise(OpenVision2(config), seed).eval(), tokenizer


def tiny_checkpoint(directory, seed: int = 0, **options):
    model, tokenizer = tiny_model(seed, **options)
    save_checkpoint(directory, model, tokenizer)
    return model, tokenizer


def images(count: int = 2, seed: int = 1) -> torch.Tensor:
    """Normalised float images, as every library's model takes them after its own preprocessing."""
    generator = torch.Generator().manual_seed(seed)
    return normalize(torch.randint(0, 256, (count, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator,
                                   dtype=torch.uint8))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.detach().float() - b.detach().float()).abs().max().item()
