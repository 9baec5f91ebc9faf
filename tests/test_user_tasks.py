"""Evaluation on the user's own labelled images (issue 12 §3): ImageFolder, CSV/JSONL and shard tasks
through `ov2 eval zeroshot` and `ov2 eval probe`."""

import json

import numpy as np
import pytest
from PIL import Image

from openvision2.cli import main
from openvision2.data.writer import ShardWriter
from openvision2.errors import UserError
from openvision2.eval.user_tasks import TEMPLATES, user_task

from interop_fixtures import tiny_checkpoint

CLASSES = {"red_square": (220, 30, 30), "blue_circle": (40, 60, 230), "white_cross": (240, 240, 240)}
PER_CLASS = 10


def picture(colour, seed) -> Image.Image:
    noise = np.random.default_rng(seed).integers(0, 40, (40, 48, 3))
    pixels = np.clip(noise + np.array(colour) * (np.arange(48)[None, :, None] > 12), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)  # not square and not the model's size: the task resizes


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for c, (name, colour) in enumerate(CLASSES.items()):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            picture(colour, 100 * c + i).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    tiny_checkpoint(path)
    return path


def run_json(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("target", ["zeroshot", "probe"])
def test_imagefolder_task(folder, checkpoint, target, capsys):
    result = run_json(["eval", target, "--checkpoint", str(checkpoint), "--task", f"imagefolder:{folder}",
                       "--json", "--vs-random", *(["--attentive-epochs", "2"] if target == "probe" else [])], capsys)
    assert result["task"] == f"imagefolder:{folder}"
    for name in ("trained", "random_init"):
        if target == "zeroshot":
            assert result[name]["num_classes"] == 3 and result[name]["num_images"] == 6  # 20% of 30
            assert result[name]["num_prompts"] == 3 * len(TEMPLATES)
            assert 0 <= result[name]["top1"] <= 1
        else:
            assert (result[name]["num_train"], result[name]["num_test"], result[name]["num_classes"]) == (24, 6, 3)
            assert {"linear_pooled", "attentive", "knn"} <= result[name].keys()


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
@pytest.mark.parametrize("target", ["zeroshot", "probe"])
def test_csv_task_with_its_own_split(folder, checkpoint, tmp_path, target, suffix, capsys):
    rows = [(f"{folder}/{name}/{i:03d}.png", name, "test" if i < 2 else "train")
            for name in CLASSES for i in range(PER_CLASS)]
    table = tmp_path / f"labels.{suffix}"
    if suffix == "csv":
        table.write_text("file,label,split\n" + "".join(f"{f},{label},{s}\n" for f, label, s in rows))
    else:
        table.write_text("".join(json.dumps({"file": f, "label": label, "split": s}) + "\n" for f, label, s in rows))
    templates = tmp_path / "templates.txt"
    templates.write_text("# mine\na {} on the right\nthe {}\n")
    extra = ["--attentive-epochs", "2"] if target == "probe" else []
    result = run_json(["eval", target, "--checkpoint", str(checkpoint), "--task", f"csv:{table}", "--json",
                       "--templates", str(templates), *extra], capsys)
    if target == "zeroshot":
        assert (result["trained"]["num_images"], result["trained"]["num_prompts"]) == (6, 6)
    else:
        assert (result["trained"]["num_train"], result["trained"]["num_test"]) == (24, 6)


def test_names_splits_and_prompts(folder, tmp_path):
    task = user_task(f"imagefolder:{folder}", 16, seed=0)
    assert task.classnames == ["blue circle", "red square", "white cross"]  # sorted folder names, "_" as space
    assert task.prompts[1][0] == "a photo of a red square"
    again, other = user_task(f"imagefolder:{folder}", 16, seed=0), user_task(f"imagefolder:{folder}", 16, seed=1)
    assert again.test.labels.tolist() == task.test.labels.tolist() and (again.test.images == task.test.images).all()
    assert not (other.test.images.shape == task.test.images.shape and (other.test.images == task.test.images).all())
    assert task.train.images.shape == (24, 3, 16, 16)


def test_shard_task_reads_the_label_key(folder, tmp_path):
    with ShardWriter(tmp_path / "shards", per_shard=16) as writer:
        for c, name in enumerate(CLASSES):
            for i in range(PER_CLASS):
                data = (folder / name / f"{i:03d}.png").read_bytes()
                writer.write(f"{c}{i:03d}", {"png": data, "json": {"cls": c, "classname": name}})
    task = user_task(f"shards:{tmp_path / 'shards'}", 16, label_key="cls")
    assert task.classnames == ["blue circle", "red square", "white cross"] and len(task.test.labels) == 6
    with pytest.raises(UserError, match="no sample's json has 'label': set --label-key"):
        user_task(f"shards:{tmp_path / 'shards'}", 16)


@pytest.mark.parametrize("spec,message", [("imagefolder:/nonexistent", "not a directory"),
                                          ("csv:/nonexistent.csv", "no such file"),
                                          ("folder:/x", "unknown task")])
def test_bad_task_is_one_line(checkpoint, spec, message, capsys):
    assert main(["eval", "zeroshot", "--checkpoint", str(checkpoint), "--task", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_templates_replace_a_built_in_tasks_prompts_without_touching_its_cache(tmp_path):
    from openvision2.eval.tasks import load_task

    templates = tmp_path / "templates.txt"
    templates.write_text("a {} on the left\n")
    own = load_task("synthetic-colour", 32, num_train=8, num_test=8)
    mine = load_task("synthetic-colour", 32, num_train=8, num_test=8, templates=str(templates))
    assert mine.prompts == [[f"a {name} on the left"] for name in own.classnames]
    assert load_task("synthetic-colour", 32, num_train=8, num_test=8).prompts == own.prompts != mine.prompts
    with pytest.raises(UserError, match="cannot read the templates file"):
        load_task("synthetic-colour", 32, num_train=8, num_test=8, templates=str(tmp_path / "none.txt"))


def test_bad_samples_are_skipped_and_counted(folder, checkpoint, tmp_path, capsys):
    """A corrupt image in a folder, a CSV row naming a missing file, a shard sample with broken json or
    without the label: each is left out, counted by reason, and the evaluation goes on."""
    import shutil

    root = tmp_path / "images"
    shutil.copytree(folder, root)
    (root / "red_square" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    task = user_task(f"imagefolder:{root}", 16, seed=0)
    assert task.skipped == {"unreadable_image": 1} and len(task.train.labels) + len(task.test.labels) == 30

    table = tmp_path / "labels.csv"
    table.write_text(f"{folder}/red_square/000.png,red_square\n{tmp_path}/gone.png,blue_circle\n" +
                     "".join(f"{folder}/{n}/{i:03d}.png,{n}\n" for n in CLASSES for i in range(1, 4)))
    result = run_json(["eval", "probe", "--checkpoint", str(checkpoint), "--task", f"csv:{table}", "--json",
                       "--probes", "linear"], capsys)
    assert result["skipped_samples"] == {"missing_file": 1}
    assert result["trained"]["num_train"] + result["trained"]["num_test"] == 10  # 11 rows, one missing

    with ShardWriter(tmp_path / "shards", per_shard=64) as writer:
        for c, name in enumerate(CLASSES):
            for i in range(4):
                writer.write(f"{c}{i:03d}", {"png": (folder / name / f"{i:03d}.png").read_bytes(),
                                             "json": {"label": name}})
        writer.write("nolabel", {"png": (folder / "red_square" / "005.png").read_bytes(), "json": {"other": 1}})
        writer.write("badjson", {"png": (folder / "red_square" / "006.png").read_bytes(), "json": b"{not json"})
    task = user_task(f"shards:{tmp_path / 'shards'}", 16)
    assert task.skipped == {"missing_label": 1, "bad_json": 1}
    assert len(task.train.labels) + len(task.test.labels) == 12
    err = capsys.readouterr().err
    assert "skipping" in err and "(missing_label)" in err and "(bad_json)" in err


def test_csv_headers_are_recognised_and_never_a_class(folder, tmp_path):
    """A spreadsheet's "CSV UTF-8" (a BOM before the header) and a header with other names (`path,klass`)
    are headers, not a phantom class; a header naming its columns places them by name."""
    rows = "".join(f"{folder}/{n}/{i:03d}.png,{n}\n" for n in CLASSES for i in range(3))
    flipped = "".join(f"{n},{folder}/{n}/{i:03d}.png\n" for n in CLASSES for i in range(3))
    for name, text, encoding in (("bom.csv", "file,label\n" + rows, "utf-8-sig"), ("klass.csv", "path,klass\n" + rows, "utf-8"),
                                 ("named.csv", "Class,Image\n" + flipped, "utf-8"), ("none.csv", rows, "utf-8")):
        (tmp_path / name).write_text(text, encoding=encoding)
        task = user_task(f"csv:{tmp_path / name}", 16)
        assert task.classnames == ["blue circle", "red square", "white cross"], name
        assert len(task.train.labels) + len(task.test.labels) == 9 and task.skipped == {}, name
    # a first data row whose image is missing is still data (it has an image suffix): skipped and counted
    (tmp_path / "gone.csv").write_text(f"{tmp_path}/gone.png,red_square\n" + rows)
    assert user_task(f"csv:{tmp_path / 'gone.csv'}", 16).skipped == {"missing_file": 1}


def test_a_csv_that_is_not_utf8_is_one_line(checkpoint, tmp_path, capsys):
    table = tmp_path / "latin1.csv"
    table.write_bytes("file,label\nphoto.png,caf\xe9\nother.png,th\xe9\n".encode("latin-1"))
    assert main(["eval", "zeroshot", "--checkpoint", str(checkpoint), "--task", f"csv:{table}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8 text" in err and "CSV UTF-8" in err, err


def test_an_unreadable_shard_is_skipped_and_counted(folder, tmp_path):
    """As in training: one shard that is not a tar archive is passed over and counted; the others are read."""
    with ShardWriter(tmp_path / "shards", per_shard=64) as writer:
        for c, name in enumerate(CLASSES):
            for i in range(4):
                writer.write(f"{c}{i:03d}", {"png": (folder / name / f"{i:03d}.png").read_bytes(), "json": {"label": name}})
    (tmp_path / "shards" / "zz-broken.tar").write_bytes(b"<html>not a tar</html>" * 40)
    task = user_task(f"shards:{tmp_path / 'shards'}", 16)
    assert task.skipped == {"unreadable_shard": 1}
    assert len(task.train.labels) + len(task.test.labels) == 12
    with pytest.raises(UserError, match="skipped: {'unreadable_shard': 1}"):
        user_task(f"shards:{tmp_path / 'shards' / 'zz-broken.tar'}", 16)
