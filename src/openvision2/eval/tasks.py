"""Classification tasks for zero-shot and probe evaluation: images, labels, class names, and the
texts whose caption likelihood scores each class.

Embedded dataset: images holding a single group of objects (so the label is unambiguous), labelled
by the group's colour and shape ("synthetic-object", 30 classes), colour alone ("synthetic-colour",
6) or shape alone ("synthetic-shape", 5). Prompts are beginnings of captions in the dataset's own
style, e.g. "a small red circle"; every way the caption can begin for a class (count and size, and
colour for the shape task) is one prompt, and the class score sums their probabilities.
Fashion-MNIST: shards from `ov2 shards --fashion-mnist` (test-*.tar, train-*.tar), the label names
in the shards' caption templates.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import synthetic
from ..errors import UserError
from ..preprocess import pil_to_uint8

SYNTHETIC_TASKS = ("synthetic-object", "synthetic-colour", "synthetic-shape")
TASKS = (*SYNTHETIC_TASKS, "fashion-mnist")
# How a single group's caption can begin: count word and size ("three large" does not occur).
_OPENINGS = (("a", "small", False), ("a", "large", False), ("two", "small", True), ("three", "small", True))


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # long [N]


@dataclass
class ClassificationTask:
    name: str
    classnames: list[str]
    prompts: list[list[str]]  # per class: the texts whose likelihoods (summed as probabilities) score it
    train: Split  # for probes
    test: Split  # held out: zero-shot and probe accuracy


def _noun(shape: str, plural: bool) -> str:
    return synthetic._PLURAL[shape] if plural else shape


def synthetic_classes(task: str) -> tuple[list[str], list[list[str]], callable]:
    """(class names, prompts per class, scene -> label) of an embedded-dataset task."""
    if task == "synthetic-object":
        pairs = [(c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES]
        prompts = [[f"{count} {size} {c} {_noun(s, plural)}" for count, size, plural in _OPENINGS] for c, s in pairs]
        return [f"{c} {s}" for c, s in pairs], prompts, lambda g: pairs.index((g.colour, g.shape))
    if task == "synthetic-colour":
        prompts = [[f"{count} {size} {c}" for count, size, _ in _OPENINGS] for c in synthetic.COLOURS]
        return list(synthetic.COLOURS), prompts, lambda g: synthetic.COLOURS.index(g.colour)
    if task == "synthetic-shape":
        prompts = [[f"{count} {size} {c} {_noun(s, plural)}" for count, size, plural in _OPENINGS
                    for c in synthetic.COLOURS] for s in synthetic.SHAPES]
        return list(synthetic.SHAPES), prompts, lambda g: synthetic.SHAPES.index(g.shape)
    raise UserError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")


def _single_group_split(split: str, count: int, image_size: int, seed: int, label_of) -> Split:
    images, labels, index = [], [], 0
    while len(images) < count:
        scene = synthetic.make_scene(index, split, seed)
        index += 1
        if len(scene.groups) != 1:
            continue
        pixels = np.asarray(synthetic.render(scene, image_size))
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
        labels.append(label_of(scene.groups[0]))
    return Split(torch.stack(images), torch.tensor(labels))


@lru_cache(maxsize=8)
def synthetic_task(task: str, image_size: int, num_train: int = 2000, num_test: int = 500,
                   seed: int = 0) -> ClassificationTask:
    """Train images from the dataset's train split (probes), test images from its val split."""
    classnames, prompts, label_of = synthetic_classes(task)
    return ClassificationTask(task, classnames, prompts,
                              _single_group_split("train", num_train, image_size, seed, label_of),
                              _single_group_split("val", num_test, image_size, seed, label_of))


def _key_and_ext(name: str) -> tuple[str, str]:
    """WebDataset's grouping: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return f"{folder}/{stem}" if folder else stem, ext.lower()


def _read_shards(paths: list[Path], limit: int, image_size: int) -> tuple[Split, dict]:
    """The first `limit` samples with an image and a json label from tar shards, in shard order."""
    samples: dict[str, dict] = {}
    order: list[str] = []
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _key_and_ext(member.name)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext] = tar.extractfile(member).read()
        if sum("json" in samples[k] for k in order) >= limit:
            break
    images, labels, meta = [], [], {}
    for key in order:
        sample = samples[key]
        image_ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in sample), None)
        if image_ext is None or "json" not in sample:
            continue
        info = json.loads(sample["json"])
        with Image.open(io.BytesIO(sample[image_ext])) as image:
            images.append(pil_to_uint8(image, image_size))
        labels.append(int(info["label"]))
        meta.setdefault(int(info["label"]), info)
        if len(images) == limit:
            break
    if not images:
        raise UserError(f"no labelled samples in {', '.join(map(str, paths))}")
    return Split(torch.stack(images), torch.tensor(labels)), meta


@lru_cache(maxsize=4)
def fashion_mnist_task(shard_dir: str, image_size: int, num_train: int = 2000, num_test: int = 1000) -> ClassificationTask:
    """Fashion-MNIST from `ov2 shards --fashion-mnist` shards; prompts are its caption templates."""
    from ..data.fashion_mnist import CLASSES, captions_for

    root = Path(shard_dir)
    train_paths, test_paths = sorted(root.glob("train-*.tar")), sorted(root.glob("test-*.tar"))
    if not test_paths or not train_paths:
        raise UserError(f"no Fashion-MNIST shards (train-*.tar and test-*.tar) in {root}: "
                        "write them with `ov2 shards --fashion-mnist --out DIR`")
    train, _ = _read_shards(train_paths, num_train, image_size)
    test, _ = _read_shards(test_paths, num_test, image_size)
    prompts = [[text.rstrip(".") for text in captions_for(label)] for label in range(len(CLASSES))]
    return ClassificationTask("fashion-mnist", list(CLASSES), prompts, train, test)


def load_task(name: str, image_size: int, *, num_train: int = 2000, num_test: int = 500, seed: int = 0,
              shards: str = "", templates: str = "", label_key: str = "label") -> ClassificationTask:
    from .user_tasks import is_user_task, user_task

    if is_user_task(name):  # imagefolder:DIR, csv:FILE, shards:PATTERN (eval/user_tasks.py)
        return user_task(name, image_size, num_train=num_train, num_test=num_test, seed=seed, templates=templates,
                         label_key=label_key)
    if name in SYNTHETIC_TASKS:
        return synthetic_task(name, image_size, num_train, num_test, seed)
    if name == "fashion-mnist":
        if not shards:
            raise UserError("the fashion-mnist task needs --shards DIR (from `ov2 shards --fashion-mnist`)")
        return fashion_mnist_task(shards, image_size, num_train, num_test)
    raise UserError(f"unknown task {name!r}: use one of {', '.join(TASKS)}, or imagefolder:DIR, csv:FILE, "
                    "shards:PATTERN")


# --- held-out captioned images (caption metrics, the report's grid) ---------------------------------

@dataclass
class CaptionSet:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    references: list[list[str]]  # per image, its reference captions (the first is its own caption)


def synthetic_captions(count: int, image_size: int, seed: int = 0) -> CaptionSet:
    """The first `count` images of the embedded dataset's val split (the training loop's held-out set)."""
    data = synthetic.SyntheticCaptions(count, split="val", image_size=image_size, seed=seed)
    items = [data[i] for i in range(count)]
    return CaptionSet(torch.stack([it["image"] for it in items]), [[it["caption"]] for it in items])


def shard_captions(shards: str, count: int, image_size: int) -> CaptionSet:
    """The first `count` samples of tar shards (a directory, preferring test-*.tar, or one .tar file):
    the txt member is the caption; a json "captions" list adds references."""
    root = Path(shards)
    paths = [root] if root.is_file() else sorted(root.glob("test-*.tar")) or sorted(root.glob("*.tar"))
    if not paths:
        raise UserError(f"no .tar shards at {shards}")
    images, references = [], []
    for path in paths:
        with tarfile.open(path) as tar:
            samples: dict[str, dict] = {}
            for member in tar:
                if member.isfile():
                    key, ext = _key_and_ext(member.name)
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for sample in samples.values():
            image_ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in sample), None)
            if image_ext is None or "txt" not in sample:
                continue
            refs = [sample["txt"].decode("utf-8").strip()]
            if "json" in sample:
                extra = json.loads(sample["json"]).get("captions", [])
                refs += [c for c in extra if isinstance(c, str) and c != refs[0]]
            with Image.open(io.BytesIO(sample[image_ext])) as image:
                images.append(pil_to_uint8(image, image_size))
            references.append(refs)
            if len(images) == count:
                return CaptionSet(torch.stack(images), references)
    if not images:
        raise UserError(f"no captioned images in {shards}")
    return CaptionSet(torch.stack(images), references)
