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

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..data import synthetic
from ..errors import UserError
from .task_data import ClassificationTask, Split
from .user_tasks import is_user_task, read_templates, user_task
from .zeroshot import prompts_from_templates

SYNTHETIC_TASKS = ("synthetic-object", "synthetic-colour", "synthetic-shape")
TASKS = (*SYNTHETIC_TASKS, "fashion-mnist")
# How a single group's caption can begin: count word and size ("three large" does not occur).
_OPENINGS = (("a", "small", False), ("a", "large", False), ("two", "small", True), ("three", "small", True))


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


def read_held_out(shards: str | list[str], image_size: int, count: int, caption_key: str = "txt",
                  accept=None) -> tuple[list, dict[str, int]]:
    """The first `count` usable samples of shards in shard order, through the training data reader:
    a bad sample (corrupt image, non-UTF-8 caption, bad json, a file that is not a tar archive ...) is
    skipped, counted by reason and logged, never fatal. Returns (accept(sample) of each, skipped counts)."""
    from ..data.augment import EvalResize
    from ..data.shards import ShardDataset

    if count < 1:
        raise UserError(f"the number of held-out images must be >= 1, got {count}")
    dataset = ShardDataset(shards, EvalResize(image_size, draft=False), caption_key=caption_key, shuffle=False,
                           epochs=1, with_meta=True)
    return dataset.first(count, accept)


def _read_shards(paths: list[Path], limit: int, image_size: int, num_classes: int) -> Split:
    """The first `limit` samples with an image and a json label (a class index) from tar shards, in shard order."""
    from ..data.badsamples import BadSample

    def labelled(sample: dict) -> tuple[torch.Tensor, int]:
        label = sample["meta"].get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
            raise BadSample("missing_label", f"json label {label!r} is not a class index below {num_classes}")
        return sample["image"], label

    found, skipped = read_held_out([str(p) for p in paths], image_size, limit, caption_key="", accept=labelled)
    if not found:
        raise UserError(f"no labelled samples in {', '.join(map(str, paths))}"
                        + (f" (skipped: {skipped})" if skipped else ""))
    return Split(torch.stack([image for image, _ in found]), torch.tensor([label for _, label in found]), skipped)


@lru_cache(maxsize=4)
def fashion_mnist_task(shard_dir: str, image_size: int, num_train: int = 2000, num_test: int = 1000) -> ClassificationTask:
    """Fashion-MNIST from `ov2 shards --fashion-mnist` shards; prompts are its caption templates."""
    from ..data.fashion_mnist import CLASSES, captions_for

    root = Path(shard_dir)
    train_paths, test_paths = sorted(root.glob("train-*.tar")), sorted(root.glob("test-*.tar"))
    if not test_paths or not train_paths:
        raise UserError(f"no Fashion-MNIST shards (train-*.tar and test-*.tar) in {root}: "
                        "write them with `ov2 shards --fashion-mnist --out DIR`")
    train = _read_shards(train_paths, num_train, image_size, len(CLASSES))
    test = _read_shards(test_paths, num_test, image_size, len(CLASSES))
    prompts = [[text.rstrip(".") for text in captions_for(label)] for label in range(len(CLASSES))]
    return ClassificationTask("fashion-mnist", list(CLASSES), prompts, train, test)


def load_task(name: str, image_size: int, *, num_train: int = 2000, num_test: int = 500, seed: int = 0,
              shards: str = "", templates: str = "", label_key: str = "label") -> ClassificationTask:
    if is_user_task(name):  # imagefolder:DIR, csv:FILE, shards:PATTERN (eval/user_tasks.py)
        return user_task(name, image_size, num_train=num_train, num_test=num_test, seed=seed, templates=templates,
                         label_key=label_key)
    if name in SYNTHETIC_TASKS:
        task = synthetic_task(name, image_size, num_train, num_test, seed)
    elif name == "fashion-mnist":
        if not shards:
            raise UserError("the fashion-mnist task needs --shards DIR (from `ov2 shards --fashion-mnist`)")
        task = fashion_mnist_task(shards, image_size, num_train, num_test)
    else:
        raise UserError(f"unknown task {name!r}: use one of {', '.join(TASKS)}, or imagefolder:DIR, csv:FILE, "
                        "shards:PATTERN")
    if templates:  # the user's prompts replace the task's own (a copy: the built-in tasks are cached)
        task = replace(task, prompts=prompts_from_templates(task.classnames, read_templates(templates)))
    return task


# --- held-out captioned images (caption metrics, the report's grid) ---------------------------------

@dataclass
class CaptionSet:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    references: list[list[str]]  # per image, its reference captions (the first is its own caption)
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples passed over, by reason


def synthetic_captions(count: int, image_size: int, seed: int = 0) -> CaptionSet:
    """The first `count` images of the embedded dataset's val split (the training loop's held-out set)."""
    data = synthetic.SyntheticCaptions(count, split="val", image_size=image_size, seed=seed)
    items = [data[i] for i in range(count)]
    return CaptionSet(torch.stack([it["image"] for it in items]), [[it["caption"]] for it in items])


def shard_captions(shards: str, count: int, image_size: int) -> CaptionSet:
    """The first `count` samples of tar shards (a directory, preferring test-*.tar; a .tar file; or a
    shard pattern, remote ones included: data/remote.py): the txt member is the caption; a json
    "captions" list adds references."""
    from ..data.shards import MAX_CAPTION_CHARS

    root = Path(shards)
    paths = [str(p) for p in (sorted(root.glob("test-*.tar")) or sorted(root.glob("*.tar")))] if root.is_dir() \
        else shards
    if not paths:
        raise UserError(f"no .tar shards at {shards}")

    def references(sample: dict) -> tuple[torch.Tensor, list[str]]:
        refs, extra = [sample["caption"]], sample["meta"].get("captions")
        if isinstance(extra, list):  # cut like the caption itself
            refs += [c[:MAX_CAPTION_CHARS] for c in extra if isinstance(c, str) and c != refs[0]]
        return sample["image"], refs

    found, skipped = read_held_out(paths, image_size, count, accept=references)
    if not found:
        raise UserError(f"no captioned images in {shards}" + (f" (skipped: {skipped})" if skipped else ""))
    return CaptionSet(torch.stack([image for image, _ in found]), [refs for _, refs in found], skipped)
