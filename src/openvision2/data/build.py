"""From a config's data section to batches: the dataset, the tokenizer, the caption tokens, the
resumable training stream, the held-out batch."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..tokenizer import CaptionTokenizer
from .config import DATASETS, DataConfig
from .resumable import ResumableBatches, micro_batch_size  # noqa: F401  (micro_batch_size: for the loop)
from .sentences import sub_caption
from .synthetic import SyntheticCaptions


def build_dataset(name: str, split: str, num_samples: int, image_size: int, seed: int) -> Dataset:
    if name == "synthetic":
        return SyntheticCaptions(num_samples, split=split, image_size=image_size, seed=seed)
    if name == "shards":
        raise UserError("dataset=shards needs its shard paths: build it with build_from_config(config, split)")
    raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def build_from_config(data: DataConfig, split: str, image_size: int, seed: int = 0) -> Dataset:
    """The "train" or "val" dataset of a config's data section (for every dataset, shards included).
    Shards: training = endless shuffled stream with the DESIGN.md §4.2 augmentations; val = one ordered
    pass, resized (its first val_samples form the held-out batch)."""
    if data.dataset != "shards":
        count = data.train_samples if split == "train" else data.val_samples
        return build_dataset(data.dataset, split, count, image_size, seed)
    from .augment import EvalResize, TrainAugment
    from .shards import ShardDataset

    train = split == "train"
    spec = data.train_shards if train else data.val_shards
    if not spec:
        raise UserError(f"dataset=shards needs {split}_shards=PATHS (e.g. data/{split}-{{000000..000009}}.tar); "
                        "`ov2 shards` writes them")
    transform = (TrainAugment(image_size, max_pixels=data.max_image_pixels) if train
                 else EvalResize(image_size, max_pixels=data.max_image_pixels))
    return ShardDataset(spec, transform, caption_key=data.caption_key, alt_caption_key=data.alt_caption_key,
                        seed=seed, shuffle=train, shuffle_buffer=data.shuffle_buffer,
                        with_replacement=train and data.sample_with_replacement,
                        epochs=None if train else 1, drop_last=train, remote=remote_options(data))


def remote_options(data: DataConfig):
    """How the data section fetches remote shards (its shard_* fields; data/remote.py)."""
    from .remote import RemoteOptions

    return RemoteOptions(cache_dir=data.shard_cache, read_ahead=data.shard_read_ahead, timeout=data.shard_timeout,
                         retries=data.shard_retries, deadline=data.shard_deadline, max_bytes=data.shard_max_bytes,
                         storage_options=data.storage_options())


def build_tokenizer(data: DataConfig, train_set) -> CaptionTokenizer:
    """The data section's tokenizer: OpenVision's WordPiece, or a BPE fitted to the training captions."""
    if data.tokenizer == "wordpiece":
        return CaptionTokenizer.wordpiece(data.tokenizer_path or None)
    return CaptionTokenizer.train_bpe(train_set.captions(), data.bpe_vocab_size)


def train_batches(data: DataConfig, dataset: Dataset, collate, *, batch_size: int, micro_batches: int = 1,
                  rank: int = 0, world_size: int = 1, seed: int = 0):
    """The training stream: this rank's micro-batches of a global batch_size, endlessly, with
    state_dict()/load_state_dict() (the interface of data/resumable.py). Both kinds follow one global
    sample order whatever the world size; shards: a ShardBatches (data/loader.py; bad_samples())."""
    from .shards import ShardDataset

    if isinstance(dataset, ShardDataset):
        from .loader import ShardBatches

        dataset.batch_size, dataset.collate = micro_batch_size(batch_size, world_size, micro_batches), collate
        dataset.rank, dataset.world_size = rank, world_size
        return ShardBatches(dataset, data.num_workers, micro_batches=micro_batches)
    return ResumableBatches(dataset, batch_size, collate, rank=rank, world_size=world_size,
                            micro_batches=micro_batches, num_workers=data.num_workers, seed=seed)


EXTRA_FIELDS = ("alt_captions", "sub_captions")


class CaptionCollate:
    """Stacks uint8 images and turns captions into [B, text_len] token sequences (DESIGN.md §3.2).

    extra_fields adds what a method needs beside the long caption (a model lists them in its
    `batch_fields`): "alt_captions" (the alt-text) and "sub_captions" (one random sentence of the
    caption: the sample's "sub_caption", which the datasets draw with the sample's own rng; for a
    dataset without one, drawn here with Python's `random`), each [B, alt_text_len].
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
            sentences = [s["sub_caption"] if "sub_caption" in s else sub_caption(s["caption"]) for s in samples]
            batch["sub_captions"] = self.tokenizer.encode(sentences, self.alt_text_len)
        return batch


def fixed_batch(dataset: Dataset, collate: CaptionCollate, count: int) -> dict:
    """The first `count` samples as one batch: the held-out set evaluated throughout a run."""
    if hasattr(dataset, "first"):  # a ShardDataset (iterable): the first samples of an ordered pass
        samples, skipped = dataset.first(count)
    else:
        samples, skipped = [dataset[i] for i in range(min(count, len(dataset)))], {}
    if not samples:
        found = f"every sample was skipped ({skipped})" if skipped else "it is empty"
        raise UserError(f"the held-out set has no usable sample: {found}; point val_shards at image-caption "
                        "shards (or set val_samples >= 1)")
    return collate(samples)
