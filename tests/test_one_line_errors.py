"""Bad input at the data, evaluation and interop boundaries gets one line naming the problem, never a
traceback: also when it is found inside a DataLoader worker or inside timm / transformers."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from openvision2.cli import main
from openvision2.data.shards import parse_sources
from openvision2.errors import UserError
from openvision2.train.config import apply_overrides
from openvision2.train.presets import get_preset

from interop_fixtures import tiny_checkpoint
from shard_fixtures import write_shards


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"ov2 {command}: error: ")
    assert not any(line.startswith(" ") for line in err)  # no traceback frames, no wrapped message
    return err[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    tiny_checkpoint(directory)
    return directory


def test_a_user_error_inside_a_dataloader_worker_is_one_line(tmp_path, capsys):
    write_shards(tmp_path / "val", "val", num_shards=1, per_shard=4)
    (tmp_path / "junk").mkdir()
    for i in range(2):
        (tmp_path / "junk" / f"junk-{i}.tar").write_bytes(b"not a tar archive" * 64)
    # counted by a sizes.json, so the shards are found unreadable when read: inside the worker
    (tmp_path / "junk" / "sizes.json").write_text('{"junk-0.tar": 8, "junk-1.tar": 8}')
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress", "dataset=shards",
                 f"train_shards={tmp_path}/junk/junk-{{0..1}}.tar", f"val_shards={tmp_path}/val",
                 "num_workers=1", "val_samples=4", "batch_size=4"])
    assert code == 2
    assert "gave no usable sample" in one_line_error(capsys, "train")


def test_a_run_that_fails_with_dataloader_workers_alive_still_exits(tmp_path):
    """Workers ignore SIGTERM (preemption safety), so multiprocessing's exit handler cannot end them:
    a run stopped by an error while its workers live must end them itself, not hang at exit."""
    write_shards(tmp_path / "val", "val", num_shards=1, per_shard=4)
    (tmp_path / "junk").mkdir()
    for i in range(2):
        (tmp_path / "junk" / f"junk-{i}.tar").write_bytes(b"not a tar archive" * 64)
    # counted by a sizes.json, so the shards are found unreadable when read: inside the worker
    (tmp_path / "junk" / "sizes.json").write_text('{"junk-0.tar": 8, "junk-1.tar": 8}')
    command = [sys.executable, "-m", "openvision2.cli", "train", "--out", str(tmp_path / "run"), "--steps", "2",
               "--no-progress", "dataset=shards", f"train_shards={tmp_path}/junk/junk-{{0..1}}.tar",
               f"val_shards={tmp_path}/val", "num_workers=1", "val_samples=4", "batch_size=4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "gave no usable sample" in done.stderr


def test_shard_patterns_that_cannot_work_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unbalanced braces"):
        parse_sources(f"{tmp_path}/train-{{000..009.tar")
    with pytest.raises(UserError, match="none of the 10 shards"):
        parse_sources(f"{tmp_path}/train-{{000..009}}.tar")


def test_an_image_smaller_than_a_patch_is_one_line_and_a_remainder_is_floored():
    with pytest.raises(UserError, match="smaller than the patch size 16"):
        apply_overrides(get_preset("tiny-cpu"), ["encoder=nano/16", "image_size=12"])
    # 30 px in 16 px patches: one patch per side, the rest dropped as the release's VALID conv does
    assert apply_overrides(get_preset("tiny-cpu"), ["encoder=nano/16", "image_size=30"]).image_size == 30


def test_export_to_an_impossible_out_is_one_line(checkpoint, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "timm", "--out", str(a_file / "sub")]) == 2
    assert "cannot create --out" in one_line_error(capsys, "export")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header; no pixel data needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("pixels", [(12_000, 12_000), (30_000, 30_000)])  # PIL: a warning / an error
def test_caption_refuses_a_decompression_bomb_in_one_line(checkpoint, tmp_path, capsys, pixels):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(*pixels))
    assert main(["caption", "--checkpoint", str(checkpoint), str(bomb)]) == 2
    assert "decompression bomb" in one_line_error(capsys, "caption")


@pytest.mark.parametrize("argv", [["zeroshot", "--test-images", "-5"], ["zeroshot", "--test-images", "0"],
                                  ["probe", "--train-images", "0"]])
def test_eval_refuses_counts_below_one(checkpoint, capsys, argv):
    assert main(["eval", *argv, "--checkpoint", str(checkpoint)]) == 2
    assert "must be >= 1" in one_line_error(capsys, "eval")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    from openvision2.interop import export_checkpoint

    root = tmp_path_factory.mktemp("exports")
    for fmt in ("timm", "hf", "open_clip"):
        export_checkpoint(checkpoint, fmt, root / fmt)
    return root


def _variant(exports, tmp_path, fmt: str, kind: str) -> Path:
    weights = {"timm": "model.safetensors", "hf": "model.safetensors", "open_clip": "open_clip_model.safetensors"}
    directory = tmp_path / f"{fmt}-{kind}"
    shutil.copytree(exports / fmt, directory)
    if kind == "missing":
        (directory / weights[fmt]).unlink()
    elif kind == "pickle":
        (directory / weights[fmt]).unlink()
        name = "open_clip_pytorch_model.bin" if fmt == "open_clip" else "pytorch_model.bin"
        (directory / name).write_bytes(pickle.dumps({"weight": _RunsCode()}))
    elif kind == "truncated":
        data = (directory / weights[fmt]).read_bytes()
        (directory / weights[fmt]).write_bytes(data[:len(data) // 2])
    elif kind == "remote-code":
        config = json.loads((directory / "config.json").read_text())
        config.update(model_type="my_vit", auto_map={"AutoConfig": "configuration_my.MyConfig",
                                                     "AutoModel": "modeling_my.MyModel"})
        (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("fmt,kind,says", [
    ("timm", "missing", "cannot load"), ("timm", "pickle", "never runs code"), ("timm", "truncated", "cannot load"),
    ("hf", "missing", "cannot load"), ("hf", "pickle", "never runs code"), ("hf", "truncated", "cannot load"),
    ("hf", "remote-code", "never runs code"), ("open_clip", "pickle", "never runs code")])
def test_import_refusals_are_one_line(exports, tmp_path, capsys, fmt, kind, says):
    source = _variant(exports, tmp_path, fmt, kind)
    assert main(["import", "--from", str(source), "--out", str(tmp_path / "out")]) == 2
    assert says in one_line_error(capsys, "import")
    assert not (tmp_path / "out").exists()
