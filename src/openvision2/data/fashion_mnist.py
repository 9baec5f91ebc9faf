"""Fashion-MNIST (Debian package `dataset-fashion-mnist`) as caption shards: the first real-image corpus.

Each 28x28 grayscale image becomes a PNG; its caption names the class through one of several
templates (the `txt` member, a fixed template per image), and the json member holds the label, the
class name and every template's caption under `captions` (train with caption_key=captions to draw one
per visit).
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .writer import ShardWriter, next_shard_number, write_sizes

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
TEMPLATES = ("a photo of {a} {c}.", "a black and white photo of {a} {c}.", "{a} {c} on a black background.",
             "a picture of {a} {c}.", "a small image of {a} {c}.")
SPLITS = {"train": "train", "test": "t10k"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions_for(label: int) -> list[str]:
    name = CLASSES[label]
    return [t.format(a=_article(name), c=name) for t in TEMPLATES]


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped): uint8 images [N, rows, cols] or labels [N]."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path} is not a uint8 idx file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: {array.size} values for shape {shape}")
    return array.reshape(shape)


def find_split(source: str | Path, split: str) -> tuple[Path, Path]:
    source = Path(source)
    stem = SPLITS[split]
    for suffix in (".gz", ""):
        images = source / f"{stem}-images-idx3-ubyte{suffix}"
        labels = source / f"{stem}-labels-idx1-ubyte{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    raise UserError(f"no Fashion-MNIST {split} files in {source}: install them with "
                    "`apt-get install dataset-fashion-mnist` or pass --source DIR")


def write_fashion_mnist(out_dir: str | Path, source: str | Path = DEFAULT_DIR, per_shard: int = 5000,
                        limit: int | None = None) -> dict[str, dict[str, int]]:
    """Write train-*.tar and test-*.tar into out_dir; returns {split: {shard: count}}."""
    result = {}
    for split in SPLITS:
        find_split(source, split)  # both splits are there before anything is written
    for split in SPLITS:
        images_path, labels_path = find_split(source, split)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise UserError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels")
        count = len(images) if limit is None else min(limit, len(images))
        start = next_shard_number(out_dir, split) if Path(out_dir).is_dir() else 0
        with ShardWriter(out_dir, prefix=split, per_shard=per_shard, start=start, write_sizes=False) as writer:
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(images[i], "L").save(buffer, "PNG")
                label = int(labels[i])
                captions = captions_for(label)
                writer.write(f"{split}{i:06d}", {"png": buffer.getvalue(), "txt": captions[i % len(captions)],
                                                 "json": {"label": label, "class": CLASSES[label],
                                                          "captions": captions}})
        result[split] = writer.sizes
    write_sizes(out_dir, {name: n for sizes in result.values() for name, n in sizes.items()})  # last: on success
    return result


def caption_names_class(caption: str, label: int, classes: tuple[str, ...] = CLASSES) -> bool:
    """True if the caption names the label's class and no other class ("t-shirt" is not "shirt")."""
    # word-bounded matching; a tokenizer may decode "t-shirt" as "t - shirt"
    text = " " + " ".join(caption.lower().replace(" - ", "-").replace(".", " ").split()) + " "
    return {i for i, name in enumerate(classes) if f" {name} " in text} == {label}
