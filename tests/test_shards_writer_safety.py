"""`ov2 shards` never overwrites or mixes, never leaves a half shard or a lying sizes.json, skips
rows it must not embed, and answers bad arguments in one line."""

from __future__ import annotations

import json
import os

import pytest

from openvision2.cli import main
from openvision2.data.augment import EvalResize
from openvision2.data.shards import ShardDataset
from openvision2.data.writer import ShardWriter

from shard_fixtures import image_bytes


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.jpg").write_bytes(image_bytes(i))
    return images


def shards(folder, captions, out, *extra):
    return main(["shards", "--images", str(folder), "--captions", str(captions), "--out", str(out), "--json",
                 *extra])


def written(capsys, folder, captions, out, *extra) -> dict:
    """A successful `ov2 shards` run's JSON summary (samples, skipped reasons, ...)."""
    assert shards(folder, captions, out, *extra) == 0
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("ov2 shards: error:")
    return err


def test_a_second_run_into_the_same_out_is_refused_unless_appending(folder, tmp_path, capsys):
    captions = tmp_path / "c.csv"
    captions.write_text("file,caption\n" + "".join(f"{i}.jpg,photo {i}\n" for i in range(4)))
    out = tmp_path / "out"
    assert shards(folder, captions, out, "--per-shard", "3") == 0
    capsys.readouterr()
    assert shards(folder, captions, out, "--per-shard", "3") == 2
    assert "--append" in one_line_error(capsys)
    assert shards(folder, captions, out, "--per-shard", "3", "--append") == 0
    assert json.loads((out / "sizes.json").read_text()) == {
        "shard-000000.tar": 3, "shard-000001.tar": 1, "shard-000002.tar": 3, "shard-000003.tar": 1}
    samples = list(ShardDataset(str(out), EvalResize(16), shuffle=False, epochs=1).samples(0, 1))
    assert [s["caption"] for s in samples] == [f"photo {i}" for i in range(4)] * 2
    assert len({s["key"] for s in samples}) == 8  # the appended keys continue the numbering


def test_a_crash_leaves_no_half_shard_and_no_sizes_json(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, prefix="p", per_shard=2) as writer:
            for i in range(3):
                writer.write(f"k{i}", {"jpg": image_bytes(i), "txt": f"caption {i}"})
            raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["p-000000.tar"]  # the complete shard, under its real name
    samples = list(ShardDataset(str(tmp_path), EvalResize(16), shuffle=False, epochs=1).samples(0, 1))
    assert [s["caption"] for s in samples] == ["caption 0", "caption 1"]


def test_truncated_images_that_pass_verify_are_skipped(folder, tmp_path, capsys):
    for fmt, ext in (("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif")):
        data = image_bytes(7, (64, 64), fmt=fmt)
        (folder / f"cut.{ext}").write_bytes(data[:len(data) // 2])  # passes PIL's verify()
    captions = tmp_path / "c.csv"
    captions.write_text("file,caption\n0.jpg,good\ncut.jpg,w\ncut.bmp,x\ncut.gif,y\ncut.tif,z\n")
    result = written(capsys, folder, captions, tmp_path / "out")
    assert result["samples"] == 1 and result["skipped"] == {"unreadable_image": 4}


def test_rows_that_are_not_json_objects_are_skipped_and_counted(folder, tmp_path, capsys):
    captions = tmp_path / "c.jsonl"
    captions.write_text('[1, 2]\n{"image": "0.jpg", "caption": "good"}\n"text"\n7\n')
    result = written(capsys, folder, captions, tmp_path / "out")
    assert result["samples"] == 1 and result["skipped"] == {"not_an_object": 3}


def test_paths_outside_the_image_folder_are_skipped_unless_allowed(folder, tmp_path, capsys):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(image_bytes(9))
    (folder / "link.jpg").symlink_to(secret)
    captions = tmp_path / "c.csv"
    captions.write_text(f"file,caption\n0.jpg,good\n../secret.jpg,up\n{secret},absolute\nlink.jpg,symlink\n")
    result = written(capsys, folder, captions, tmp_path / "out")
    assert result["samples"] == 1 and result["skipped"] == {"outside_images": 3}
    assert written(capsys, folder, captions, tmp_path / "out2", "--allow-outside-images")["samples"] == 4


def test_bad_out_and_limit_are_one_line(folder, tmp_path, capsys):
    captions = tmp_path / "c.csv"
    captions.write_text("file,caption\n0.jpg,good\n")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert shards(folder, captions, a_file) == 2
    assert "is a file" in one_line_error(capsys)
    assert shards(folder, captions, a_file / "sub") == 2
    one_line_error(capsys)
    assert shards(folder, captions, tmp_path / "out", "--limit", "-1") == 2
    assert "--limit" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
