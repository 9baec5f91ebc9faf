"""A bad sample never stops a run, in the training stream and in every held-out set: damaged tar
headers, gzip bombs, empty archives, huge captions, and bad samples among evaluation shards are
skipped (or cut) and counted, never fatal."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib

import pytest
import torch

from openvision2.data import tarindex
from openvision2.data.augment import EvalResize
from openvision2.data.build import fixed_batch
from openvision2.data import shards
from openvision2.data.shards import IndexCache, ShardDataset
from openvision2.data.writer import ShardWriter
from openvision2.errors import UserError
from openvision2.eval.tasks import fashion_mnist_task, shard_captions

from shard_fixtures import image_bytes, write_shards
from test_shards_bad_input import read_all


def _set_size_field(data: bytes, name: bytes, size_field: bytes) -> bytes:
    """The tar with member `name`'s size field replaced and its header checksum recomputed."""
    at = data.index(name)
    header = bytearray(data[at:at + 512])
    header[124:136] = size_field.ljust(12, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return data[:at] + bytes(header) + data[at + 512:]


def test_a_non_octal_size_field_with_a_valid_checksum_is_a_truncated_shard(tmp_path):
    [shard] = write_shards(tmp_path, "t", num_shards=1, per_shard=8)
    data = open(shard, "rb").read()
    open(shard, "wb").write(_set_size_field(data, b"t00005.jpg", b"12x4"))
    samples, counts = read_all([shard])
    assert [s["key"] for s in samples] == [f"t{i:05d}" for i in range(5)]
    assert counts == {"truncated_tar": 1}


def _gzip_bomb(path, inflated: int) -> None:
    """A .tar.gz whose single member is `inflated` zero bytes: a few kB on disk."""
    info = tarfile.TarInfo("bomb.bin")
    info.size = inflated
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(deflate.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
        zeros = bytes(1 << 20)
        for _ in range(inflated >> 20):
            f.write(deflate.compress(zeros))
        f.write(deflate.flush())


def test_a_gzip_bomb_is_refused_before_it_is_inflated(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    _gzip_bomb(bomb, getattr(tarindex, "MIN_INFLATED_CAP", 64 << 20) + (8 << 20))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(tarindex.UnreadableShard, match="decompression bomb"):
        tarindex.index_shard(str(bomb))
    [good] = write_shards(tmp_path, "g", num_shards=1, per_shard=3)
    samples, counts = read_all([str(bomb), good])
    assert len(samples) == 3 and counts == {"unreadable_shard": 1}


def test_the_index_cache_keeps_a_bounded_amount_of_inflated_shards(tmp_path):
    paths = []
    for i in range(4):
        [shard] = write_shards(tmp_path, f"z{i}", num_shards=1, per_shard=4)
        zipped = tmp_path / f"z{i}.tar.gz"
        zipped.write_bytes(gzip.compress(open(shard, "rb").read()))
        paths.append(str(zipped))
    one = len(tarindex.index_shard(paths[0]).data)
    cache = IndexCache(inflated_budget=2 * one)
    for path in paths:
        assert cache.get(path).data is not None
    assert cache.inflated_bytes() <= 2 * one


def test_an_empty_tar_is_counted_under_a_reason(tmp_path):
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    [good] = write_shards(tmp_path, "g", num_shards=1, per_shard=2)
    samples, counts = read_all([str(empty), good])
    assert len(samples) == 2 and counts == {"empty_shard": 1}


def test_a_huge_caption_is_cut_before_tokenising_and_counted(tmp_path):
    with ShardWriter(tmp_path, prefix="long", per_shard=10) as writer:
        writer.write("huge", {"jpg": image_bytes(0), "txt": "word " * 200_000})
        writer.write("fine", {"jpg": image_bytes(1), "txt": "a short caption"})
    samples, counts = read_all([str(tmp_path / "long-000000.tar")])
    assert [len(s["caption"]) for s in samples] == [shards.MAX_CAPTION_CHARS, len("a short caption")]
    assert counts == {"long_caption": 1}


def test_an_empty_held_out_set_is_one_user_error(tmp_path):
    empty = tmp_path / "val.tar"
    tarfile.open(empty, "w").close()
    dataset = ShardDataset(str(empty), EvalResize(16), shuffle=False, epochs=1, drop_last=False)
    with pytest.raises(UserError, match="held-out set has no usable sample"):
        fixed_batch(dataset, lambda samples: samples, 8)


def _held_out_with_bad_samples(directory, prefix: str) -> None:
    """test-000000.tar: 4 good labelled, captioned samples around a corrupt image, a non-UTF-8
    caption and a bad json member; test-000001.tar: not a tar archive at all."""
    with ShardWriter(directory, prefix=prefix, per_shard=100) as writer:
        for i in range(2):
            writer.write(f"good{i}", {"jpg": image_bytes(i), "txt": f"caption {i}",
                                      "json": {"label": i, "captions": [f"caption {i}", f"other {i}"]}})
        writer.write("corrupt", {"jpg": image_bytes(5, (64, 64))[:300], "txt": "cut", "json": {"label": 0}})
        writer.write("latin1", {"jpg": image_bytes(6), "txt": b"caf\xe9", "json": {"label": 0}})
        writer.write("badjson", {"jpg": image_bytes(7), "txt": "bad json", "json": b"{not json"})
        for i in range(2, 4):
            writer.write(f"good{i}", {"jpg": image_bytes(i), "txt": f"caption {i}", "json": {"label": i}})
    (directory / f"{prefix}-000001.tar").write_bytes(b"this is no tar archive " * 50)


def test_held_out_captions_skip_and_count_bad_samples(tmp_path):
    _held_out_with_bad_samples(tmp_path, "test")
    data = shard_captions(str(tmp_path), 100, 16)
    assert data.images.shape == (4, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.references == [["caption 0", "other 0"], ["caption 1", "other 1"], ["caption 2"], ["caption 3"]]
    assert data.skipped == {"corrupt_image": 1, "bad_text": 2, "unreadable_shard": 1}


def test_labelled_evaluation_shards_skip_and_count_bad_samples(tmp_path):
    _held_out_with_bad_samples(tmp_path, "test")
    _held_out_with_bad_samples(tmp_path, "train")
    task = fashion_mnist_task(str(tmp_path), 16, num_train=100, num_test=100)
    assert task.test.labels.tolist() == [0, 1, 0, 2, 3]  # the labelled reader reads no caption
    assert task.test.skipped == {"corrupt_image": 1, "bad_text": 1, "unreadable_shard": 1}


def test_caption_accuracy_skips_and_counts_bad_samples(tmp_path, capsys):
    import json

    from openvision2.cli import main

    from interop_fixtures import tiny_checkpoint

    tiny_checkpoint(tmp_path / "ckpt")
    with ShardWriter(tmp_path / "labelled", prefix="test", per_shard=10) as writer:
        writer.write("bag", {"png": image_bytes(0, fmt="PNG"), "json": {"class": "bag"}})
        writer.write("badjson", {"png": image_bytes(1, fmt="PNG"), "json": b"{not json"})
        writer.write("corrupt", {"jpg": image_bytes(2, (64, 64))[:300], "json": {"class": "coat"}})
        writer.write("unknown", {"png": image_bytes(3, fmt="PNG"), "json": {"class": "hat"}})
        writer.write("coat", {"png": image_bytes(4, fmt="PNG"), "json": {"class": "coat"}})
    assert main(["caption-accuracy", "--checkpoint", str(tmp_path / "ckpt"), "--shards",
                 str(tmp_path / "labelled"), "--classes", "bag,coat", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2
    assert result["skipped"] == {"bad_text": 1, "corrupt_image": 1, "missing_label": 1}
