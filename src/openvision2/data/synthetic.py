"""Procedurally generated image-caption pairs: no download, any number of samples.

Each image holds 1-3 groups of identical flat shapes on a dark background, each group in its
own cell of a 3x3 grid. The long caption names every group (count, size, colour, shape,
position) in reading order, so the text is a function of the image; every attribute is drawn
at random, so a text-only model cannot guess it and an image-conditioned model must look.
Sample ``i`` of a split comes from its own RNG seeded with ``(seed, split, i)``, so any index
can be generated alone, in any order, in any worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from openvision2.errors import UserError

from .sentences import sub_caption

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SIZES = ("small", "large")
REGIONS = ("top left", "top", "top right", "left", "center", "right",
           "bottom left", "bottom", "bottom right")  # reading order; index = 3 * row + col
SPLITS = {"train": 0, "val": 1}

# Saturated colours, each with a channel >= 200, so none can be confused with the dark background.
COLOUR_RGB = {"red": (230, 30, 30), "green": (40, 200, 40), "blue": (50, 90, 255),
              "yellow": (240, 220, 30), "purple": (170, 60, 230), "white": (245, 245, 245)}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "cross": "crosses", "diamond": "diamonds"}
_COUNT_WORD = ("", "a", "two", "three")
_PLACE = {r: ("in the " if r == "center" else "on the " if r in ("left", "right") else "at the ") + r
          for r in REGIONS}
# Object diameters as fractions of the image side (7-8.5 px and 15-17 px at 64 px).
_DIAMETER = {"small": (7 / 64, 8.5 / 64), "large": (15 / 64, 17 / 64)}
_MARGIN = 1 / 64  # gap kept to the cell border (about a pixel), so rasterising never spills into a neighbour cell
# Centres within a cell (cell-relative) for 2 or 3 small objects; spaced so they never touch.
_LAYOUTS = {2: (((0.26, 0.5), (0.74, 0.5)), ((0.5, 0.26), (0.5, 0.74)),
                ((0.28, 0.28), (0.72, 0.72)), ((0.72, 0.28), (0.28, 0.72))),
            3: (((0.26, 0.28), (0.74, 0.28), (0.5, 0.74)), ((0.5, 0.26), (0.26, 0.72), (0.74, 0.72)))}


@dataclass(frozen=True)
class Group:
    """``count`` identical objects in one grid cell; geometry is in fractions of the image side."""
    shape: str
    colour: str
    size: str
    region: str
    count: int
    diameter: float
    centres: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]  # sorted by region, reading order
    background: tuple[int, int, int]
    noise_seed: int  # makes the background noise, so render(scene) is deterministic


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def make_scene(index: int, split: str = "train", seed: int = 0) -> Scene:
    """The scene of sample ``index`` of ``split``; a pure function of its arguments."""
    index, seed = int(index), int(seed)  # numpy / torch integers must seed exactly like Python ints
    if index < 0:
        raise UserError(f"sample index must be >= 0, got {index}")
    # Python's Random seeded by a string (sha512) costs ~7 us against ~35 us for numpy's SeedSequence,
    # which matters for captions() over 50k samples; only .random() is used, whose stream Python
    # guarantees not to change across versions.
    u = random.Random(f"{seed}/{_split_id(split)}/{index}").random
    pick = lambda options: options[int(u() * len(options))]  # noqa: E731
    n_groups = 1 + int(u() * 3)
    cells = sorted(sorted(range(9), key=lambda _: u())[:n_groups])  # distinct cells, reading order
    groups = []
    for cell in cells:
        size = pick(SIZES)
        count = 1 + int(u() * 3) if size == "small" else 1  # three large objects would not fit a cell
        lo, hi = _DIAMETER[size]
        diameter = lo + (hi - lo) * u()
        row, col = divmod(cell, 3)
        if count == 1:  # jitter the lone object but keep it inside its cell
            slack = (1 / 3 - diameter) / 2 - _MARGIN
            offsets = [(1 / 6 + slack * (2 * u() - 1), 1 / 6 + slack * (2 * u() - 1))]
        else:
            offsets = [((x + 0.015 * (2 * u() - 1)) / 3, (y + 0.015 * (2 * u() - 1)) / 3)
                       for x, y in pick(_LAYOUTS[count])]
        centres = tuple((col / 3 + dx, row / 3 + dy) for dx, dy in offsets)
        groups.append(Group(pick(SHAPES), pick(COLOURS), size, REGIONS[cell], count, diameter, centres))
    background = tuple(int(10 + 45 * u()) for _ in range(3))
    return Scene(tuple(groups), background, int(u() * 2**31))


def _phrase(g: Group) -> str:
    noun = g.shape if g.count == 1 else _PLURAL[g.shape]
    return f"{_COUNT_WORD[g.count]} {g.size} {g.colour} {noun} {_PLACE[g.region]}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene) -> str:
    """Long caption, e.g. 'a large red circle at the top left and two small blue squares at the bottom.'"""
    return _join([_phrase(g) for g in scene.groups]) + "."


def alt_text(scene: Scene) -> str:
    """Short caption of colours and shapes only, e.g. 'red circle and blue squares'."""
    totals: dict[tuple[str, str], int] = {}  # merge groups that only differ in position/size/count
    for g in scene.groups:
        totals[g.colour, g.shape] = totals.get((g.colour, g.shape), 0) + g.count
    return _join([f"{c} {s if n == 1 else _PLURAL[s]}" for (c, s), n in totals.items()])


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        s = 0.85 * r  # a full-box square looks much bigger than a circle of the same diameter
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)], fill=fill)
    elif shape == "cross":
        t = r / 3
        draw.rectangle([x - r, y - t, x + r, y + t], fill=fill)
        draw.rectangle([x - t, y - r, x + t, y + r], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw ``scene`` as an RGB image; deterministic (noise comes from ``scene.noise_seed``)."""
    noise = np.random.default_rng(scene.noise_seed).integers(-6, 7, (image_size, image_size, 3))
    pixels = np.clip(np.asarray(scene.background) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for g in scene.groups:
        # -0.5: pixel centres sit at integer coordinates, so this keeps shapes symmetric in their cell.
        for cx, cy in g.centres:
            _draw(draw, g.shape, cx * image_size - 0.5, cy * image_size - 0.5,
                  g.diameter * image_size / 2, COLOUR_RGB[g.colour])
    return image


class SyntheticCaptions(torch.utils.data.Dataset):
    """``num_samples`` generated image-caption pairs of one split; items are built on demand."""

    def __init__(self, num_samples: int, split: str = "train", image_size: int = 64, seed: int = 0):
        if num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {num_samples}")
        if image_size < 16:
            raise UserError(f"image_size must be >= 16 px, got {image_size}")
        _split_id(split)  # fail now, not in a data-loader worker
        self.num_samples, self.split, self.image_size, self.seed = num_samples, split, image_size, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} samples")
        scene = make_scene(i, self.split, self.seed)
        pixels = np.asarray(render(scene, self.image_size))
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()  # [3, H, W] uint8
        caption = describe(scene)
        sentence = sub_caption(caption, random.Random(f"{self.seed}/{self.split}/{i}/sentence"))
        return {"image": image, "caption": caption, "alt_text": alt_text(scene), "sub_caption": sentence}

    def captions(self) -> list[str]:
        """All long captions without rendering any image (e.g. to train a tokenizer)."""
        return [describe(make_scene(i, self.split, self.seed)) for i in range(self.num_samples)]
