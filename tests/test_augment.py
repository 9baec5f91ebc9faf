"""DESIGN.md §4.2 augmentations: crop statistics, no flip, jitter/grayscale rates, exact colour ops, and
reduced-size JPEG decoding that keeps the crop statistics."""

from __future__ import annotations

import colorsys
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TVF

from openvision2.data import augment
from openvision2.data.augment import EvalResize, TrainAugment, colour_jitter, inception_crop_box
from openvision2.data.decode import decode_crop


def jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def smooth_photo(width: int = 500, height: int = 375) -> np.ndarray:
    """Smooth colour gradients: what survives JPEG and downscaling alike."""
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    return (40 + 180 * x * np.array([1.0, 0.5, 0.2]) + 30 * y * np.array([0.2, 0.6, 1.0])).astype(np.uint8)


def test_inception_crop_area_and_ratio_ranges():
    rng = random.Random(0)
    areas, ratios = [], []
    for _ in range(4000):
        left, top, right, bottom = inception_crop_box(500, 375, rng)
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        areas.append((right - left) * (bottom - top) / (500 * 375))
        ratios.append((right - left) / (bottom - top))
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.4 and areas.max() <= 1.0
    assert areas.min() < 0.42 and areas.max() > 0.95  # the whole range is used
    assert ratios.min() > 3 / 4 - 0.01 and ratios.max() < 4 / 3 + 0.01
    assert ratios.min() < 0.8 and ratios.max() > 1.25


def test_inception_crop_falls_back_to_the_whole_image():
    # a 1000x10 strip admits no 3/4..4/3 box of 40% of its area
    assert inception_crop_box(1000, 10, random.Random(0)) == (0.0, 0.0, 1000.0, 10.0)


def test_no_horizontal_flip():
    """Left is darker than right in every augmented view (a flip would swap them); jitter is off so
    only the crop and resize act."""
    data = jpeg(smooth_photo())
    aug = TrainAugment(32, jitter_prob=0.0, gray_prob=0.0)
    rng = random.Random(1)
    for _ in range(50):
        out = aug(data, rng).float()
        assert out.shape == (3, 32, 32)
        assert out[0, :, :4].mean() < out[0, :, -4:].mean()


def test_draft_decoding_keeps_the_crop_and_its_content():
    """The crop box is drawn on the original size whatever the decode scale, and the reduced decode
    shows the same pixels as a full decode within JPEG/resampling noise."""
    data = jpeg(smooth_photo(1000, 750))
    for seed in range(10):
        fast = decode_crop(data, 48, lambda w, h: inception_crop_box(w, h, random.Random(seed)), draft=True)
        full = decode_crop(data, 48, lambda w, h: inception_crop_box(w, h, random.Random(seed)), draft=False)
        difference = np.abs(np.asarray(fast, dtype=float) - np.asarray(full, dtype=float))
        assert difference.mean() < 2.0 and difference.max() < 12


def test_draft_mode_is_used_for_small_targets():
    """A 1000x750 JPEG cropped to 84 px is decoded at 1/4 scale or less (the point of the fast path)."""
    data = jpeg(smooth_photo(1000, 750))
    sizes = []

    class Spy:
        def __init__(self, width, height):
            sizes.append((width, height))

    original = Image.Image.resize

    def spy_resize(self, size, *args, **kwargs):
        Spy(*self.size)
        return original(self, size, *args, **kwargs)

    Image.Image.resize = spy_resize
    try:
        decode_crop(data, 84, lambda w, h: (0.0, 0.0, float(w), float(h)))
    finally:
        Image.Image.resize = original
    assert sizes == [(125, 94)]  # 1/8 scale: 1000/8 >= 84 and 750/8 >= 84


def test_jitter_and_grayscale_rates_and_uint8_output():
    data = jpeg(smooth_photo(120, 90))
    plain = EvalResize(24)(data)  # the uncropped reference is not comparable; use rates instead
    assert plain.dtype == torch.uint8 and plain.shape == (3, 24, 24)
    aug = TrainAugment(24, area=(1.0, 1.0), ratio=(4 / 3, 4 / 3))  # crop = whole image
    unjittered = TrainAugment(24, area=(1.0, 1.0), ratio=(4 / 3, 4 / 3), jitter_prob=0.0, gray_prob=0.0)
    rng = random.Random(5)
    reference = unjittered(data, random.Random(0))
    changed = gray = 0
    trials = 600
    for _ in range(trials):
        out = aug(data, rng)
        assert out.dtype == torch.uint8
        is_gray = bool((out[0] == out[1]).all() and (out[1] == out[2]).all())
        gray += is_gray
        changed += not is_gray and not torch.equal(out, reference)
    assert abs(gray / trials - 0.2) < 0.05
    assert abs(changed / trials - 0.8 * 0.8) < 0.06  # jittered and not grayed


def test_colour_ops_match_their_tf_definitions():
    x = np.random.default_rng(0).random((3, 6, 6), dtype=np.float32)  # [3, H, W] in [0, 1]
    x[:, 0, 0] = 0.5  # a gray pixel
    x[1, 0, 1] = x[0, 0, 1]  # a tie for the largest channel
    for delta in (-0.08, 0.03, 0.4, -0.5):
        expected = TVF.adjust_hue(torch.from_numpy(x), delta).numpy()
        np.testing.assert_allclose(augment._hue(x.copy(), delta), expected, atol=1e-5)
    for factor in (0.7, 1.3):
        out = augment._saturation(x.copy(), factor)
        for i in range(6):
            for j in range(6):
                h, s, v = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
                np.testing.assert_allclose(out[:, i, j], colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v), atol=1e-5)
    mean = x.mean(axis=(1, 2), keepdims=True)
    contrast = augment._contrast(x.copy(), 1.3)  # per-channel mean kept, deviations scaled
    np.testing.assert_allclose(contrast, mean + 1.3 * (x - mean), atol=1e-5)
    np.testing.assert_allclose(augment._brightness(x.copy(), 1.2), x * 1.2, atol=1e-6)
    gray = augment.grayscale(x)
    np.testing.assert_allclose(gray[0], 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2], atol=1e-6)


def test_jitter_strength_04_factor_ranges():
    """Brightness/contrast/saturation factors in [0.68, 1.32], hue in [-0.08, 0.08] (DESIGN.md §4.2)."""
    seen = {}

    def record(name):
        def op(x, value):
            seen.setdefault(name, []).append(value)
            return x
        return op

    names = ("_brightness", "_contrast", "_saturation", "_hue")
    saved = {name: getattr(augment, name) for name in names}
    try:
        for name in names:
            setattr(augment, name, record(name))
        rng = random.Random(0)
        for _ in range(2000):
            colour_jitter(np.full((3, 2, 2), 0.5, dtype=np.float32), rng, 0.4)
    finally:
        for name, fn in saved.items():
            setattr(augment, name, fn)
    for name in ("_brightness", "_contrast", "_saturation"):
        assert min(seen[name]) >= 0.68 and max(seen[name]) <= 1.32 and max(seen[name]) > 1.3
    assert min(seen["_hue"]) >= -0.08 and max(seen["_hue"]) <= 0.08 and max(seen["_hue"]) > 0.075


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_every_pil_mode_becomes_rgb(mode):
    image = Image.fromarray(smooth_photo(40, 30)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if mode in ("L", "CMYK") else "PNG")
    out = TrainAugment(16)(buffer.getvalue(), random.Random(0))
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
