"""From a TrainConfig to batches: the dataset, the caption tokens, an endless shuffled loader."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..errors import UserError
from ..tokenizer import CaptionTokenizer
from .synthetic import SyntheticCaptions

DATASETS = ("synthetic",)


def build_dataset(name: str, split: str, num_samples: int, image_size: int, seed: int) -> Dataset:
    if name == "synthetic":
        return SyntheticCaptions(num_samples, split=split, image_size=image_size, seed=seed)
    raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


class CaptionCollate:
    """Stacks uint8 images and turns captions into [B, text_len] token sequences (SPEC §3.2)."""

    def __init__(self, tokenizer: CaptionTokenizer, text_len: int):
        self.tokenizer, self.text_len = tokenizer, text_len

    def __call__(self, samples: list[dict]) -> dict:
        return {"images": torch.stack([s["image"] for s in samples]),
                "captions": self.tokenizer.encode([s["caption"] for s in samples], self.text_len),
                "texts": [s["caption"] for s in samples]}


def endless_batches(dataset: Dataset, batch_size: int, collate: CaptionCollate, num_workers: int,
                    seed: int) -> Iterator[dict]:
    """Reshuffled epochs, one after another, for as many steps as the run takes."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, generator=generator),
                        collate_fn=collate, num_workers=num_workers, drop_last=True,
                        persistent_workers=num_workers > 0)
    while True:
        yield from loader


def fixed_batch(dataset: Dataset, collate: CaptionCollate, count: int) -> dict:
    """The first `count` samples as one batch: the held-out set evaluated throughout a run."""
    return collate([dataset[i] for i in range(min(count, len(dataset)))])
