"""`ov2 shards` from parquet (Hugging Face datasets layout), COCO caption annotations and existing
img2dataset shards: the shards it writes read back with the right captions, and train."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openvision2.cli import main
from openvision2.commands.shards import parse_size
from openvision2.data.augment import EvalResize
from openvision2.data.shards import ShardDataset
from openvision2.errors import UserError
from openvision2.train.loop import train
from scaleout_helpers import tiny_config
from shard_fixtures import image_bytes, write_shards


def _read(out, caption_key="txt"):
    return list(ShardDataset(str(out), EvalResize(16), caption_key=caption_key, shuffle=False, epochs=1).samples(0, 1))


def _train(tmp_path, shards: str, **changes):
    config = tiny_config(dataset="shards", train_shards=shards, val_shards=shards, shuffle_buffer=8, steps=2,
                         val_samples=4, evals="", **changes)
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["step"] == 2 and summary["final_val_loss"] > 0


def test_parquet_with_datasets_image_structs(tmp_path, capsys):
    """The layout `datasets` writes: image = {bytes, path}; one bad image, one empty caption."""
    images = [{"bytes": image_bytes(i), "path": f"{i}.jpg"} for i in range(10)]
    images[3] = {"bytes": b"not an image", "path": "3.jpg"}
    captions = [f"a photo number {i}" for i in range(10)]
    captions[5] = " "
    table = pa.table({"image": images, "caption": captions, "url": [f"http://x/{i}" for i in range(10)]})
    pq.write_table(table.slice(0, 6), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(6), tmp_path / "part-1.parquet")
    out = tmp_path / "out"
    assert main(["shards", "--parquet", str(tmp_path / "*.parquet"), "--out", str(out), "--per-shard", "5",
                 "--workers", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 8 and result["skipped"] == {"unreadable_image": 1, "empty_caption": 1}
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 5, "shard-000001.tar": 3}
    samples = _read(out)
    assert [s["caption"] for s in samples] == [f"a photo number {i}" for i in (0, 1, 2, 4, 6, 7, 8, 9)]
    _train(tmp_path, str(out / "shard-{000000..000001}.tar"))


def test_parquet_with_binary_images_and_caption_lists(tmp_path, capsys):
    table = pa.table({"jpg": [image_bytes(i, fmt="PNG") for i in range(3)],
                      "re_caption": [[f"long {i}", f"other {i}"] for i in range(3)]})
    pq.write_table(table, tmp_path / "data.parquet")
    assert main(["shards", "--parquet", str(tmp_path / "data.parquet"), "--caption-column", "re_caption",
                 "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "3 samples in 1 shards" in capsys.readouterr().out
    assert [s["caption"] for s in _read(tmp_path / "out")] == ["long 0", "long 1", "long 2"]
    assert main(["shards", "--parquet", str(tmp_path / "data.parquet"), "--caption-column", "nope",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "no column 'nope'" in capsys.readouterr().err


def test_coco_captions_keep_every_caption(tmp_path, capsys):
    images = tmp_path / "train2017"
    images.mkdir()
    for i in range(6):
        (images / f"{i:012d}.jpg").write_bytes(image_bytes(i))
    records = [{"id": 100 + i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 32} for i in range(7)]
    annotations = [{"id": n, "image_id": 100 + i, "caption": f"caption {j} of image {i}"}
                   for n, (i, j) in enumerate((i, j) for i in range(7) for j in range(5 if i != 2 else 0))]
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps({"info": {}, "images": records, "annotations": annotations}))
    out = tmp_path / "out"
    assert main(["shards", "--coco", str(path), "--image-dir", str(images), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # image 2 has no caption, image 6's file is missing
    assert result["samples"] == 5 and result["skipped"] == {"empty_caption": 1, "unreadable_image": 1}
    samples = _read(out, caption_key="captions")
    assert [s["caption"].split(" of ")[1] for s in samples] == [f"image {i}" for i in (0, 1, 3, 4, 5)]
    assert all(s["caption"].startswith("caption ") for s in samples)
    _train(tmp_path, str(out / "shard-000000.tar"), caption_key="captions")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    assert main(["shards", "--coco", str(tmp_path / "bad.json"), "--image-dir", str(images),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not a COCO caption file" in capsys.readouterr().err


def test_img2dataset_shards_are_checked_and_resharded(tmp_path, capsys):
    shards = write_shards(tmp_path / "in", "t", num_shards=3, per_shard=4)
    (tmp_path / "in" / "t-000001.tar").write_bytes(b"")  # its sizes.json entry stays
    out = tmp_path / "out"
    assert main(["shards", "--img2dataset", str(tmp_path / "in" / "t-{000000..000002}.tar"), "--out", str(out),
                 "--per-shard", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 8 and result["skipped"] == {"unreadable_shard": 1}
    samples = _read(out)
    assert [s["caption"] for s in samples] == [f"caption {i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)]
    first = json.loads((out / "sizes.json").read_text())
    assert first == {"shard-000000.tar": 3, "shard-000001.tar": 3, "shard-000002.tar": 2}
    with tarfile.open(out / "shard-000000.tar") as tar:  # the json member keeps the fields and the key
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert meta == {"index": 0, "captions": ["first 0", "second 0"], "source_key": "t00000"}
    assert len(shards) == 3


def test_shard_size_limits_bytes(tmp_path, capsys):
    write_shards(tmp_path / "in", "t", num_shards=1, per_shard=6)
    assert main(["shards", "--img2dataset", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--shard-size", "8KiB", "--json"]) == 0
    sizes = json.loads(capsys.readouterr().out)["shards"]
    assert sum(sizes.values()) == 6 and len(sizes) > 1
    for name in sizes:  # members as stored (header + padded data); tarfile pads the file itself to 10 kB
        with tarfile.open(tmp_path / "out" / name) as tar:
            assert sum(512 + (m.size + 511) // 512 * 512 for m in tar) <= 8192
    assert parse_size("500MB") == 500_000_000 and parse_size("1GiB") == 2 ** 30 and parse_size("4096") == 4096
    with pytest.raises(UserError, match="--shard-size"):
        parse_size("lots")


def test_coco_file_names_outside_the_image_folder_are_skipped(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(image_bytes(0))
    (tmp_path / "secret.jpg").write_bytes(image_bytes(1))
    records = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "../secret.jpg"},
               {"id": 3, "file_name": str(tmp_path / "secret.jpg")}]
    annotations = [{"id": i, "image_id": i, "caption": f"caption {i}"} for i in (1, 2, 3)]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations}))
    assert main(["shards", "--coco", str(path), "--image-dir", str(images), "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 1 and result["skipped"] == {"outside_images": 2}


def test_a_file_that_is_not_parquet_or_is_damaged_is_one_line(tmp_path, capsys):
    """Truncated (a download cut short), an HTML error page saved under the name, an empty file, and one
    whose first page is garbled (found only while reading): one line each, never pyarrow's traceback."""
    pq.write_table(pa.table({"jpg": [image_bytes(i, fmt="PNG") for i in range(20)],
                             "caption": [f"photo {i}" for i in range(20)]}), tmp_path / "good.parquet")
    good = (tmp_path / "good.parquet").read_bytes()
    damaged = bytearray(good)
    damaged[4:64] = bytes(60)  # the first page header, right after the leading magic
    for name, data, why in (("cut", good[:len(good) // 2], "is not a parquet file"),
                            ("html", b"<html><body>404 Not Found</body></html>", "is not a parquet file"),
                            ("empty", b"", "is not a parquet file"), ("garbled", bytes(damaged), "is damaged")):
        (tmp_path / f"{name}.parquet").write_bytes(data)
        assert main(["shards", "--parquet", str(tmp_path / f"{name}.parquet"), "--out", str(tmp_path / name),
                     "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err and "re-download it or leave it out" in err, err


def test_a_coco_file_too_large_to_parse_whole_is_refused_before_reading(tmp_path, capsys):
    """A sparse file one byte over the limit: refused from its size (a read would take ~5.5x it in memory)."""
    from openvision2.data.corpora.coco import MAX_ANNOTATION_BYTES

    path = tmp_path / "captions_huge.json"
    with open(path, "wb") as f:
        f.truncate(MAX_ANNOTATION_BYTES + 1)  # no disk used, and never read: it is all zero bytes
    (tmp_path / "images").mkdir()
    assert MAX_ANNOTATION_BYTES == 2 ** 30
    assert main(["shards", "--coco", str(path), "--image-dir", str(tmp_path / "images"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is 1.0 GiB, over the 1 GiB ov2 shards --coco reads whole" in err, err
    assert main(["shards", "--coco", str(tmp_path / "images"), "--image-dir", str(tmp_path / "images"),
                 "--out", str(tmp_path / "o")]) == 2  # a directory
    assert "cannot read the annotation file" in capsys.readouterr().err
