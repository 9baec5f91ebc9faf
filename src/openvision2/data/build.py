"""From a TrainConfig to batches: the dataset, the caption tokens, an endless shuffled loader."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..errors import UserError
from ..tokenizer import CaptionTokenizer
from .synthetic import SyntheticCaptions

DATASETS = ("synthetic", "shards")


def build_dataset(name: str, split: str, num_samples: int, image_size: int, seed: int) -> Dataset:
    if name == "synthetic":
        return SyntheticCaptions(num_samples, split=split, image_size=image_size, seed=seed)
    if name == "shards":
        raise UserError("dataset=shards needs its shard paths: build it with build_from_config(config, split)")
    raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def build_from_config(config, split: str) -> Dataset:
    """The "train" or "val" dataset a TrainConfig names (for every dataset, shards included).
    Shards: training = endless shuffled stream with the DESIGN.md §4.2 augmentations; val = one ordered
    pass, resized (its first val_samples form the held-out batch)."""
    if config.dataset != "shards":
        count = config.train_samples if split == "train" else config.val_samples
        return build_dataset(config.dataset, split, count, config.image_size, config.seed)
    from .augment import EvalResize, TrainAugment
    from .shards import ShardDataset

    train = split == "train"
    spec = config.train_shards if train else config.val_shards
    if not spec:
        raise UserError(f"dataset=shards needs {split}_shards=PATHS (e.g. data/{split}-{{000000..000009}}.tar); "
                        "`ov2 shards` writes them")
    transform = (TrainAugment(config.image_size, max_pixels=config.max_image_pixels) if train
                 else EvalResize(config.image_size, max_pixels=config.max_image_pixels))
    return ShardDataset(spec, transform, caption_key=config.caption_key, alt_caption_key=config.alt_caption_key,
                        seed=config.seed, shuffle=train, shuffle_buffer=config.shuffle_buffer,
                        with_replacement=train and config.sample_with_replacement,
                        epochs=None if train else 1, drop_last=train)


def train_batches(config, dataset: Dataset, collate, rank: int = 0, world_size: int = 1):
    """The training stream: this rank's micro-batches, endlessly, with state_dict()/load_state_dict()
    (the interface of data/resumable.py). Shards: a ShardBatches (per-rank state; bad_samples())."""
    from .shards import ShardDataset

    if isinstance(dataset, ShardDataset):
        from .loader import ShardBatches

        parts = world_size * config.grad_accum
        if config.batch_size % parts:
            raise UserError(f"batch_size {config.batch_size} is not divisible by {world_size} ranks x "
                            f"{config.grad_accum} micro-batches")
        dataset.batch_size, dataset.collate = config.batch_size // parts, collate
        dataset.rank, dataset.world_size = rank, world_size
        return ShardBatches(dataset, config.num_workers)
    from .resumable import ResumableBatches

    return ResumableBatches(dataset, config.batch_size, collate, rank=rank, world_size=world_size,
                            micro_batches=config.grad_accum, num_workers=config.num_workers, seed=config.seed)


EXTRA_FIELDS = ("alt_captions", "sub_captions")


def sub_caption(caption: str, rng=random) -> str:
    """One sentence of a long caption, chosen uniformly (split on '.' and '!', as OpenVision 1 /
    CLIPS do, DESIGN.md §6); the whole caption if it has a single sentence."""
    pieces = [p.strip() for p in re.split(r"[.!]", caption) if p.strip()]
    return rng.choice(pieces) if pieces else caption


class CaptionCollate:
    """Stacks uint8 images and turns captions into [B, text_len] token sequences (DESIGN.md §3.2).

    extra_fields adds what a method needs beside the long caption (a model lists them in its
    `batch_fields`): "alt_captions" (the alt-text) and "sub_captions" (one random sentence of the
    caption, drawn with Python's `random`, which DataLoader seeds per worker), each [B, alt_text_len].
    """

    def __init__(self, tokenizer: CaptionTokenizer, text_len: int, extra_fields: tuple[str, ...] = (),
                 alt_text_len: int = 80):
        unknown = set(extra_fields) - set(EXTRA_FIELDS)
        if unknown:
            raise UserError(f"unknown batch fields {sorted(unknown)}: use some of {', '.join(EXTRA_FIELDS)}")
        self.tokenizer, self.text_len = tokenizer, text_len
        self.extra_fields, self.alt_text_len = tuple(extra_fields), alt_text_len

    def __call__(self, samples: list[dict]) -> dict:
        batch = {"images": torch.stack([s["image"] for s in samples]),
                 "captions": self.tokenizer.encode([s["caption"] for s in samples], self.text_len),
                 "texts": [s["caption"] for s in samples]}
        if "alt_captions" in self.extra_fields:
            batch["alt_captions"] = self.tokenizer.encode([s["alt_text"] for s in samples], self.alt_text_len)
        if "sub_captions" in self.extra_fields:
            batch["sub_captions"] = self.tokenizer.encode([sub_caption(s["caption"]) for s in samples],
                                                          self.alt_text_len)
        return batch


def endless_batches(dataset: Dataset, batch_size: int, collate: CaptionCollate, num_workers: int,
                    seed: int) -> Iterator[dict]:
    """Reshuffled epochs, one after another, for as many steps as the run takes."""
    if hasattr(dataset, "sources"):  # a ShardDataset: its own endless, resumable stream
        from .loader import ShardBatches

        dataset.batch_size, dataset.collate = batch_size, collate
        yield from ShardBatches(dataset, num_workers)
        return
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, generator=generator),
                        collate_fn=collate, num_workers=num_workers, drop_last=True,
                        persistent_workers=num_workers > 0)
    while True:
        yield from loader


def fixed_batch(dataset: Dataset, collate: CaptionCollate, count: int) -> dict:
    """The first `count` samples as one batch: the held-out set evaluated throughout a run."""
    if hasattr(dataset, "take"):  # a ShardDataset (iterable): the first samples of an ordered pass
        return collate(dataset.take(count))
    return collate([dataset[i] for i in range(min(count, len(dataset)))])
