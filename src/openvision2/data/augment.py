"""The paper's image augmentations (DESIGN.md §4.2), from encoded bytes to a uint8 [3, S, S] tensor.

Training: inception crop (40-100% of the area, aspect ratio 3/4-4/3, TF's sampling), bilinear antialiased
resize, then SimCLR-v2 colour jitter of strength 0.4 with p 0.8 (brightness, contrast, saturation 0.32,
hue 0.08, the four in random order) and grayscale with p 0.2. No flip. Evaluation: plain resize (the
released "squash" preprocessing, DESIGN.md §9.5). Normalisation happens later, on the device
(`preprocess.normalize`). Every random choice comes from the `random.Random` passed in, so a sample's
augmentation is a function of its seed: a resumed stream reproduces it exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from .decode import DEFAULT_MAX_PIXELS, Box, decode_crop, full_box, to_uint8_tensor

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale


def inception_crop_box(width: int, height: int, rng: random.Random, area: tuple[float, float] = (0.4, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 100) -> Box:
    """TF's sample_distorted_bounding_box (no bounding boxes, min_object_covered 0): the aspect ratio is
    uniform in `ratio`, the height uniform between those giving the smallest and the largest area, with
    integer sides; after `attempts` failures, the whole image. Returns (left, top, right, bottom)."""
    total = width * height
    min_area, max_area = area[0] * total, area[1] * total
    for _ in range(attempts):
        aspect = ratio[0] + (ratio[1] - ratio[0]) * rng.random()
        h = round(math.sqrt(min_area / aspect))
        max_h = round(math.sqrt(max_area / aspect))
        if round(max_h * aspect) > width:  # the largest height whose width still fits
            max_h = int((width + 0.5 - 1e-7) / aspect)
        max_h = min(max_h, height)
        h = min(h, max_h)
        h += rng.randrange(max_h - h + 1)
        w = round(h * aspect)
        if w * h < min_area:
            h += 1
            w = round(h * aspect)
        if w * h > max_area:
            h -= 1
            w = round(h * aspect)
        if min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height:
            top = rng.randrange(height - h + 1)
            left = rng.randrange(width - w + 1)
            return float(left), float(top), float(left + w), float(top + h)
    return full_box(width, height)


# The colour ops work on float32 [3, H, W] numpy arrays in [0, 1] with whole-plane elementwise ops:
# numpy runs them single-threaded with little per-op overhead, where torch's intra-op threads cost more
# than the work at 84 px, and channel planes avoid slow reductions over a size-3 axis.
def _brightness(x: np.ndarray, factor: float) -> np.ndarray:
    x *= np.float32(factor)  # SimCLR-v2 brightness is multiplicative
    return x


def _contrast(x: np.ndarray, factor: float) -> np.ndarray:
    mean = x.reshape(3, -1).mean(axis=1)[:, None, None]  # tf.image.adjust_contrast: per-channel mean
    x -= mean
    x *= np.float32(factor)
    x += mean
    return x


def _max_min(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(np.maximum(x[0], x[1]), x[2]), np.minimum(np.minimum(x[0], x[1]), x[2])


def _saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """tf.image.adjust_saturation (HSV saturation times factor, clipped to 1) without an HSV round trip:
    with V = max channel, scaling S by f moves every channel to V - f (V - c), and clipping S at 1
    caps f at V / (V - min). (Gray pixels have c = V, so any cap leaves them alone.)"""
    value, low = _max_min(x)
    scale = np.minimum(np.float32(factor), value / np.maximum(value - low, np.float32(1e-12)))
    return value - scale * (value - x)


_HSV_OFFSETS = np.array([5.0, 3.0, 1.0], dtype=np.float32)[:, None, None]


def _hue(x: np.ndarray, delta: float) -> np.ndarray:
    """tf.image.adjust_hue: rotate the HSV hue by `delta` turns, S and V unchanged, without an HSV
    round trip: with V = max, C = max - min and the hue H in sixths of a turn, channel n (R 5, G 3,
    B 1) is V - C * clip(min(k, 4 - k), 0, 1) where k = (n + H) mod 6."""
    r, g, b = x
    value, low = _max_min(x)
    chroma = value - low
    # H * C, in [-C, 5C): the max channel picks the sector (R first on ties, like argmax)
    hue = np.where(r == value, g - b, np.where(g == value, (b - r) + 2 * chroma, (r - g) + 4 * chroma))
    hue *= np.float32(1) / np.maximum(chroma, np.float32(1e-12))
    k = _HSV_OFFSETS + (hue + np.float32((6 * delta) % 6))  # in [0, 16): wrap into [0, 6)
    k -= np.float32(6) * (k >= 6)
    k -= np.float32(6) * (k >= 6)
    np.minimum(k, 4 - k, out=k)
    np.clip(k, 0, 1, out=k)
    return value - chroma * k


def colour_jitter(x: np.ndarray, rng: random.Random, strength: float = 0.4) -> np.ndarray:
    """SimCLR-v2 `color_jitter_rand` on a float32 [3, H, W] image in [0, 1]: brightness, contrast,
    saturation (0.8 s) and hue (0.2 s) in random order, clipping to [0, 1] after each."""
    b = c = s = 0.8 * strength
    h = 0.2 * strength
    ops = [(_brightness, rng.uniform(max(0.0, 1 - b), 1 + b)), (_contrast, rng.uniform(1 - c, 1 + c)),
           (_saturation, rng.uniform(1 - s, 1 + s)), (_hue, rng.uniform(-h, h))]
    rng.shuffle(ops)
    for op, value in ops:
        x = op(x, value)
        np.clip(x, 0.0, 1.0, out=x)
    return x


def grayscale(x: np.ndarray) -> np.ndarray:
    w = GRAY_WEIGHTS
    gray = np.float32(w[0]) * x[0] + np.float32(w[1]) * x[1] + np.float32(w[2]) * x[2]
    return np.broadcast_to(gray, x.shape)


@dataclass(frozen=True)
class TrainAugment:
    """Bytes -> augmented uint8 [3, size, size] (DESIGN.md §4.2)."""
    size: int
    area: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_strength: float = 0.4
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True  # reduced-size JPEG decoding (see decode.py)

    def __call__(self, data: bytes, rng: random.Random) -> torch.Tensor:
        image = decode_crop(data, self.size, lambda w, h: inception_crop_box(w, h, rng, self.area, self.ratio),
                            self.max_pixels, self.draft)
        jitter, gray = rng.random() < self.jitter_prob, rng.random() < self.gray_prob
        if not (jitter or gray):
            return to_uint8_tensor(image)
        x = np.asarray(image).transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        if jitter:
            x = colour_jitter(x, rng, self.jitter_strength)
        if gray:
            x = grayscale(x)
        return torch.from_numpy(np.rint(x * np.float32(255)).astype(np.uint8))


@dataclass(frozen=True)
class EvalResize:
    """Bytes -> uint8 [3, size, size]: the whole image, bilinear antialiased ("squash", DESIGN.md §9.5)."""
    size: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True

    def __call__(self, data: bytes, rng: random.Random | None = None) -> torch.Tensor:
        return to_uint8_tensor(decode_crop(data, self.size, full_box, self.max_pixels, self.draft))
