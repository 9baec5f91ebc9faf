"""`ov2 shards` (image folder + CSV/JSONL, Fashion-MNIST) and `ov2 bench data`'s JSON."""

from __future__ import annotations

import json
import os

import pytest

from openvision2.cli import main
from openvision2.data.augment import EvalResize
from openvision2.data.shards import ShardDataset

from shard_fixtures import image_bytes


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(5):
        (images / "sub" / f"{i}.jpg").write_bytes(image_bytes(i))
    (images / "x.png").write_bytes(image_bytes(9, fmt="PNG"))
    (images / "y.bmp").write_bytes(image_bytes(8, fmt="BMP"))
    (images / "broken.jpg").write_bytes(b"not an image")
    return images


def test_shards_from_csv(folder, tmp_path, capsys):
    rows = ["file,caption,source"] + [f"sub/{i}.jpg,a photo number {i},web" for i in range(5)]
    rows += ["x.png,a png,web", "y.bmp,a bitmap,web", "broken.jpg,broken,web", "missing.jpg,gone,web",
             "sub/0.jpg,,web"]
    captions = tmp_path / "captions.csv"
    captions.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["shards", "--images", str(folder), "--captions", str(captions), "--out", str(out),
                 "--per-shard", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 7 and result["skipped"] == {"unreadable_image": 2, "empty_caption": 1}
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 3, "shard-000001.tar": 3,
                                                            "shard-000002.tar": 1}
    samples = list(ShardDataset(str(out), EvalResize(16), shuffle=False, epochs=1).samples(0, 1))
    assert [s["caption"] for s in samples] == [f"a photo number {i}" for i in range(5)] + ["a png", "a bitmap"]


def test_shards_from_a_spreadsheets_csv_with_a_bom(folder, tmp_path, capsys):
    """A spreadsheet's "CSV UTF-8" starts with a BOM: the header's first column is still `file`."""
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption\n" + "".join(f"sub/{i}.jpg,a photo number {i}\n" for i in range(3)),
                        encoding="utf-8-sig")
    assert main(["shards", "--images", str(folder), "--captions", str(captions), "--out", str(tmp_path / "out"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3


def test_shards_from_jsonl_with_caption_lists(folder, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps({"image": f"sub/{i}.jpg", "re_caption": [f"long {i}", f"other {i}"],
                                              "org_caption": f"alt {i}"}) for i in range(3)) + "\n")
    out = tmp_path / "out"
    assert main(["shards", "--images", str(folder), "--captions", str(captions), "--out", str(out),
                 "--caption-column", "re_caption"]) == 0
    assert "3 samples in 1 shards" in capsys.readouterr().out
    dataset = ShardDataset(str(out), EvalResize(16), caption_key="re_caption", alt_caption_key="org_caption",
                           shuffle=False, epochs=1)
    samples = list(dataset.samples(0, 1))
    assert [s["alt_text"] for s in samples] == ["alt 0", "alt 1", "alt 2"]
    assert all(s["caption"] in (f"long {i}", f"other {i}") for i, s in enumerate(samples))


def test_shards_user_errors(folder, tmp_path, capsys):
    captions = tmp_path / "c.csv"
    captions.write_text("path,label\nsub/0.jpg,x\n")
    assert main(["shards", "--images", str(folder), "--captions", str(captions), "--out", str(tmp_path / "o")]) == 2
    assert "no caption column" in capsys.readouterr().err
    assert main(["shards", "--out", str(tmp_path / "o")]) == 2
    assert main(["shards", "--images", str(folder), "--captions", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["shards", "--fashion-mnist", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_shards(tmp_path, capsys):
    from openvision2.data.fashion_mnist import CLASSES, caption_names_class

    out = tmp_path / "fmnist"
    assert main(["shards", "--fashion-mnist", "--out", str(out), "--limit", "40", "--per-shard", "25", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == {"train": 40, "test": 40}
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "test-000001.tar",
                                                         "train-000000.tar", "train-000001.tar"]
    samples = list(ShardDataset(str(out / "test-{000000..000001}.tar"), EvalResize(32), caption_key="captions",
                                shuffle=False, epochs=1).samples(0, 1))
    assert len(samples) == 40 and samples[0]["image"].shape == (3, 32, 32)
    # the test split starts with an ankle boot (label 9); every caption names its class
    assert "ankle boot" in samples[0]["caption"]
    assert all(sum(caption_names_class(s["caption"], c) for c in range(len(CLASSES))) == 1 for s in samples)


def test_caption_names_class():
    from openvision2.data.fashion_mnist import caption_names_class

    assert caption_names_class("a photo of a t-shirt.", 0)
    assert caption_names_class("a photo of a t - shirt", 0)
    assert not caption_names_class("a photo of a t-shirt.", 6)  # "shirt" is another class
    assert caption_names_class("a picture of a shirt.", 6)
    assert not caption_names_class("a sneaker and a sandal", 7)
    assert not caption_names_class("a photo of a", 7)


def test_bench_data_json(tmp_path, capsys):
    assert main(["bench", "data", "--images", "20", "--batch-size", "10", "--res", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for name in ("openvision2", "open_clip"):
        assert result[name]["images_per_s_per_core"] > 0
        assert result[name]["by_res"]["32"]["output"]["shape"] == [3, 32, 32]
    assert result["openvision2"]["by_res"]["32"]["output"]["dtype"] == "uint8"


def test_caption_accuracy_scores_the_class_named(tmp_path, capsys, monkeypatch):
    from openvision2 import generate
    from openvision2.data.writer import ShardWriter

    from interop_fixtures import tiny_checkpoint

    tiny_checkpoint(tmp_path / "ckpt")
    classes = ["bag", "coat", "bag", "sandal", "coat"]
    with ShardWriter(tmp_path / "labelled", prefix="test", per_shard=3) as writer:
        for i, name in enumerate(classes):
            writer.write(f"{i:03d}", {"png": image_bytes(i, fmt="PNG"), "json": {"class": name, "label": i}})
    shards = str(tmp_path / "labelled" / "test-{000000..000001}.tar")
    command = ["caption-accuracy", "--checkpoint", str(tmp_path / "ckpt"), "--shards", shards, "--batch-size", "2",
               "--classes", "bag,coat,sandal", "--json"]
    assert main(command) == 0  # an untrained model: any score, the right count
    assert json.loads(capsys.readouterr().out)["images"] == 5

    answers = iter(["a photo of a bag.", "a coat and a bag.", "a bag", "a photo of a sandal", "a coat"])
    monkeypatch.setattr(generate, "greedy_caption", lambda model, tokenizer, images: [next(answers) for _ in images])
    assert main(command[:-1] + ["--limit", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["images"], result["correct"]) == (4, 3)  # "a coat and a bag" names two classes
