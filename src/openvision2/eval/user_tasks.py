"""Classification tasks from the user's own labelled images, for `ov2 eval zeroshot|probe|vlm --task KIND:PATH`.

- `imagefolder:DIR`: one sub-folder per class (torchvision's ImageFolder layout); if DIR holds
  `train/` and `test/` (or `val/`) folders of that layout, they are the split.
- `csv:FILE`: rows `file,label` (an optional third column `split` says train/test), UTF-8 with or
  without a BOM (a spreadsheet's "CSV UTF-8"). The first row is a header when its first field is neither an
  existing file nor a name with an image suffix (a data row names an image, even a missing one); a header
  that names a file column (file, path, image, filename, filepath) and a label column (label, class,
  classname, category) places the columns by name, any other header (e.g. `path,klass`) by position.
  `.jsonl` files hold one {"file": ..., "label": ..., "split": ...} object per line. Relative paths are
  relative to the file.
- `shards:PATTERN`: tar shards (a directory or webdataset notation, e.g. `data/x-{000..009}.tar`)
  whose json member has the label under `label_key` (default "label") and optionally "split".
Class names are the folder / label names ("_" read as a space), sorted; a shard's integer label
takes its json "classname" (or "class_name") when present. Without a split in the data, a seeded
shuffle (seed --seed) puts 20% of the images into the test split. Zero-shot prompts are built-in
caption beginnings ("a photo of a {}", ...) or the lines of a user's templates file.
A sample that cannot be used (a missing or unreadable image, a shard sample whose json is broken or
lacks the label, every sample of a shard that cannot be read) is skipped and counted in the task's
`skipped`, which the commands report.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import UserError
from ..logs import count_skipped, get_logger
from ..preprocess import pil_to_uint8
from .task_data import ClassificationTask, Split
from .zeroshot import prompts_from_templates

KINDS = ("imagefolder", "csv", "shards")
TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a close-up photo of a {}",
             "a photo of the {}")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEST_SHARE = 0.2
PROGRESS_FROM = 500  # images: loading more than this shows a progress bar
FILE_COLUMNS = ("file", "path", "image", "filename", "filepath")  # header names of the file column
LABEL_COLUMNS = ("label", "class", "classname", "category")  # ... and of the label column
log = get_logger("eval")


def is_user_task(name: str) -> bool:
    return name.split(":", 1)[0] in KINDS and ":" in name


def read_templates(path: str) -> list[str]:
    if not path:
        return list(TEMPLATES)
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except OSError as err:
        raise UserError(f"cannot read the templates file {path}: {err.strerror}") from None
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates or any("{}" not in t for t in templates):
        raise UserError(f'{path}: every line needs a "{{}}" where the class name goes, e.g. "a photo of a {{}}"')
    return templates


# --- reading (item, label name, split or None) rows; an item is a path or an image loader ---------

def _imagefolder_rows(root: Path) -> list[tuple[object, str, str | None]]:
    if not root.is_dir():
        raise UserError(f"imagefolder:{root}: not a directory (expected one sub-folder per class)")
    split_dirs = {s: root / d for s, d in (("train", "train"), ("test", "val"), ("test", "test"))
                  if (root / d).is_dir()}
    if "train" in split_dirs and "test" in split_dirs:
        return [(path, label, split) for split, folder in split_dirs.items()
                for path, label, _ in _imagefolder_rows_flat(folder)]
    return _imagefolder_rows_flat(root)


def _imagefolder_rows_flat(root: Path) -> list[tuple[object, str, None]]:
    rows = [(path, folder.name, None) for folder in sorted(p for p in root.iterdir() if p.is_dir())
            for path in sorted(folder.rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not rows:
        raise UserError(f"imagefolder:{root}: no images in sub-folders (expected DIR/CLASS/IMAGE.jpg)")
    return rows


def _columns(first: list[str], root: Path) -> list[str] | None:
    """The columns a CSV's first row names when it is a header (see the module docstring), else None."""
    name = first[0].strip()
    if Path(name).suffix.lower() in IMAGE_SUFFIXES or (root / name).is_file():
        return None
    named = ["file" if n in FILE_COLUMNS else "label" if n in LABEL_COLUMNS else n
             for n in (c.strip().lower() for c in first)]
    return named if "file" in named and "label" in named else ["file", "label", "split"]


def _table_rows(path: Path) -> list[tuple[object, str, str | None]]:
    if not path.is_file():
        raise UserError(f"csv:{path}: no such file (expected rows file,label[,split])")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}): save it as UTF-8, e.g. a spreadsheet's "
                        "\"CSV UTF-8\"") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise UserError(f"{path}:{number}: not a JSON object") from None
    else:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        header = _columns(rows[0], path.parent) if rows else None
        if header is None:
            header = ["file", "label", "split"]
        else:
            rows = rows[1:]
        records = [dict(zip(header, [c.strip() for c in row])) for row in rows]
    out = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not record.get("file") or record.get("label") in (None, ""):
            raise UserError(f"{path}: row {number} needs a file and a label")
        split = record.get("split") or None
        if split is not None and split not in ("train", "test"):
            raise UserError(f"{path}: row {number} has split {split!r}: use train or test")
        out.append((path.parent / str(record["file"]), str(record["label"]), split))
    if not out:
        raise UserError(f"{path}: no rows")
    return out


def _shard_rows(pattern: str, label_key: str, skipped: dict[str, int]) -> list[tuple[object, str, str | None]]:
    from ..data.shards import expand_shards
    from ..data.tarindex import ShardReader, UnreadableShard, index_shard

    reader, out = ShardReader(), []
    for path in expand_shards(pattern):
        try:
            index = index_shard(path)
        except UnreadableShard as err:  # as in training: skipped and counted, the other shards still read
            count_skipped(log, skipped, "unreadable_shard", f"shard {path} ({err})")
            continue
        for members in index.members:
            image_ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in members), None)
            if image_ext is None or "json" not in members:
                continue
            try:
                info = json.loads(reader.read(index, *members["json"]))
            except ValueError:  # not UTF-8 or not JSON
                count_skipped(log, skipped, "bad_json", f"{path}: a sample's json")
                continue
            if not isinstance(info, dict) or info.get(label_key) in (None, ""):
                count_skipped(log, skipped, "missing_label", f"{path}: a sample's json without {label_key!r}")
                continue
            label = info[label_key]
            if isinstance(label, int):
                label = info.get("classname", info.get("class_name", label))
            data = reader.read(index, *members[image_ext])
            out.append((lambda d=data: Image.open(io.BytesIO(d)), str(label), info.get("split")))
    if not out:
        hint = (f" (no sample's json has {label_key!r}: set --label-key)" if skipped.get("missing_label")
                else f" (skipped: {skipped})" if skipped else "")
        raise UserError(f"shards:{pattern}: no samples with an image and a json label{hint}")
    return out


def _load(item, size: int) -> torch.Tensor | str:
    """The image as uint8 [3, size, size], or why it cannot be read."""
    try:
        with (item() if callable(item) else Image.open(item)) as image:
            return pil_to_uint8(image, size)
    except FileNotFoundError:
        return "missing_file"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return "unreadable_image"


def _split(rows, seed: int) -> tuple[list, list]:
    if any(split is not None for _, _, split in rows):
        return [r for r in rows if r[2] != "test"], [r for r in rows if r[2] == "test"]
    order = list(range(len(rows)))
    random.Random(f"user-task/{seed}").shuffle(order)
    cut = max(1, round(TEST_SHARE * len(rows)))
    return [rows[i] for i in sorted(order[cut:])], [rows[i] for i in sorted(order[:cut])]


def _images(rows, classes: list[str], size: int, limit: int, seed: int, what: str,
            skipped: dict[str, int]) -> Split:
    if len(rows) > limit:  # a seeded sample, so a cap does not keep only the first classes
        rows = [rows[i] for i in sorted(random.Random(f"cap/{seed}/{what}").sample(range(len(rows)), limit))]
    images, labels = [], []
    for item, label, _ in tqdm(rows, desc=f"loading {what} images", disable=len(rows) < PROGRESS_FROM, leave=False):
        image = _load(item, size)
        if isinstance(image, str):
            count_skipped(log, skipped, image, f"image {item if not callable(item) else 'in a shard'}")
            continue
        images.append(image)
        labels.append(classes.index(label))
    if not images:
        raise UserError(f"none of the {len(rows)} {what} images could be read ({', '.join(sorted(skipped))})")
    return Split(torch.stack(images), torch.tensor(labels))


def user_task(spec: str, image_size: int, *, num_train: int = 2000, num_test: int = 500, seed: int = 0,
              templates: str = "", label_key: str = "label") -> ClassificationTask:
    """The ClassificationTask of `KIND:PATH` (see the module docstring)."""
    kind, _, where = spec.partition(":")
    if kind not in KINDS or not where:
        raise UserError(f"unknown task {spec!r}: a user task is one of {', '.join(k + ':PATH' for k in KINDS)}")
    skipped: dict[str, int] = {}
    rows = (_imagefolder_rows(Path(where)) if kind == "imagefolder" else _table_rows(Path(where)) if kind == "csv"
            else _shard_rows(where, label_key, skipped))
    classes = sorted({label for _, label, _ in rows})
    if len(classes) < 2:
        raise UserError(f"{spec}: found {len(classes)} class; classification needs at least 2")
    train_rows, test_rows = _split(rows, seed)
    if not train_rows or not test_rows:
        raise UserError(f"{spec}: the {'train' if not train_rows else 'test'} split is empty")
    classnames = [c.replace("_", " ") for c in classes]
    prompts = prompts_from_templates(classnames, read_templates(templates))
    train = _images(train_rows, classes, image_size, num_train, seed, "train", skipped)
    test = _images(test_rows, classes, image_size, num_test, seed, "test", skipped)
    return ClassificationTask(spec, classnames, prompts, train, test, skipped)
