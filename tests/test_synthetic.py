import numpy as np
import pytest
import torch

from openvision2.data.synthetic import (COLOUR_RGB, COLOURS, REGIONS, SHAPES, Group, Scene,
                                        SyntheticCaptions, alt_text, describe, make_scene, render)
from openvision2.errors import UserError

COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "cross": "crosses", "diamond": "diamonds"}


def _group(shape, colour, size, region, count):
    return Group(shape, colour, size, region, count, 0.1, ((0.5, 0.5),) * count)


def test_wording_is_pinned():
    scene = Scene((_group("circle", "red", "large", "top left", 1),
                   _group("triangle", "yellow", "small", "center", 1),
                   _group("square", "blue", "small", "bottom", 2)), (20, 20, 20), 0)
    assert describe(scene) == ("a large red circle at the top left, a small yellow triangle in the center"
                               " and two small blue squares at the bottom.")
    assert alt_text(scene) == "red circle, yellow triangle and blue squares"
    one = Scene((_group("cross", "white", "small", "right", 3),), (0, 0, 0), 0)
    assert describe(one) == "three small white crosses on the right."
    assert alt_text(one) == "white crosses"


def test_deterministic_and_indices_differ():
    a, b = SyntheticCaptions(10), SyntheticCaptions(10)
    for i in range(3):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert a[i]["caption"] == b[i]["caption"] and a[i]["alt_text"] == b[i]["alt_text"]
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert len({a[i]["caption"] for i in range(10)}) == 10
    # Order-independent: an index rendered alone equals the same index from the dataset.
    assert make_scene(7) == make_scene(7) and describe(make_scene(7)) == a[7]["caption"]
    assert make_scene(np.int64(7)) == make_scene(torch.tensor(7)) == make_scene(7)


def test_splits_and_seeds_differ():
    train, val, other = SyntheticCaptions(20).captions(), SyntheticCaptions(20, "val").captions(), \
        SyntheticCaptions(20, seed=1).captions()
    assert len(set(train) & set(val)) < 3 and len(set(train) & set(other)) < 3


def test_captions_describe_every_group():
    for i in range(300):
        scene = make_scene(i)
        caption = describe(scene)
        regions = [REGIONS.index(g.region) for g in scene.groups]
        assert 1 <= len(scene.groups) <= 3 and regions == sorted(set(regions))
        assert caption == caption.lower() and caption.endswith(".")
        for g in scene.groups:
            assert g.shape in SHAPES and g.colour in COLOURS and 1 <= g.count <= 3
            noun = g.shape if g.count == 1 else PLURALS[g.shape]
            assert f"{COUNT_WORDS[g.count]} {g.size} {g.colour} {noun} " in caption
            assert g.region in caption
            assert f"{g.colour} {noun}" in alt_text(scene) or f"{g.colour} {PLURALS[g.shape]}" in alt_text(scene)
            for cx, cy in g.centres:  # objects inside the image and inside their own cell
                r = g.diameter / 2
                assert 0 < cx - r and cx + r < 1 and 0 < cy - r and cy + r < 1
                assert REGIONS[3 * int(cy * 3) + int(cx * 3)] == g.region


def test_item_format_and_captions_match():
    ds = SyntheticCaptions(12)
    item = ds[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert ds.captions() == [ds[i]["caption"] for i in range(len(ds))]
    assert SyntheticCaptions(2, image_size=96)[1]["image"].shape == (3, 96, 96)
    with pytest.raises(IndexError):
        ds[12]


def test_object_colours_appear_in_their_cells():
    size = 64
    edges = [round(k * size / 3) for k in range(4)]
    for i in range(60):
        scene = make_scene(i)
        pixels = np.asarray(render(scene, size))
        assert render(scene, size).tobytes() == pixels.tobytes()
        used = {g.region: g for g in scene.groups}
        for cell, region in enumerate(REGIONS):
            row, col = divmod(cell, 3)
            crop = pixels[edges[row]:edges[row + 1], edges[col]:edges[col + 1]]
            for colour in COLOURS:
                hits = int((crop == COLOUR_RGB[colour]).all(-1).sum())
                g = used.get(region)
                if g is not None and g.colour == colour:
                    assert hits >= 0.3 * (g.diameter * size) ** 2 * g.count, (i, region)
                else:
                    assert hits == 0, (i, region, colour)


def test_bad_arguments_raise_user_error():
    with pytest.raises(UserError, match="split"):
        SyntheticCaptions(5, split="test")
    with pytest.raises(UserError, match="split"):
        make_scene(0, split="validation")
    with pytest.raises(UserError, match="num_samples"):
        SyntheticCaptions(0)
