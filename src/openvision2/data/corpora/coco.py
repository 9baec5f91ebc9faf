"""COCO-style caption annotations: `captions_*.json` ({"images": [...], "annotations": [{"image_id",
"caption"}, ...]}) and the image folder. One sample per image with all its captions: the first is
the txt member, the list is the json's `captions` field (train with caption_key=captions to draw one
per visit)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import UserError
from .folder import outside_skip

# The file is parsed whole, ~5.5x its size in memory at the peak: refused beyond this before any of it is
# read (COCO's own captions_train2017.json is 0.09 GiB).
MAX_ANNOTATION_BYTES = 2 ** 30


def load(annotations: str) -> dict:
    try:
        size = os.stat(annotations).st_size
        if size > MAX_ANNOTATION_BYTES:
            raise UserError(f"annotation file {annotations} is {size / 2**30:.1f} GiB, over the "
                            f"{MAX_ANNOTATION_BYTES / 2**30:.0f} GiB ov2 shards --coco reads whole: split it into "
                            "smaller COCO files and add each with --append")
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"annotation file {annotations} does not exist") from None
    except OSError as err:  # a directory, no permission
        raise UserError(f"cannot read the annotation file {annotations}: {err.strerror}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"annotation file {annotations} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        raise UserError(f"{annotations} is not a COCO caption file: it needs \"images\" and \"annotations\" lists")
    return data


def rows(data: dict, root: str, allow_outside: bool = False) -> Iterator[dict]:
    captions: dict = {}
    for annotation in data["annotations"]:
        if isinstance(annotation, dict) and isinstance(annotation.get("caption"), str):
            captions.setdefault(annotation.get("image_id"), []).append(annotation["caption"].strip())
    for number, image in enumerate(data["images"], 1):
        if not isinstance(image, dict):
            continue
        where = f"image {image.get('id')} ({image.get('file_name')})"
        refused = outside_skip(root, str(image.get("file_name", "")), where, allow_outside)
        if refused:
            yield refused
            continue
        found = [c for c in captions.get(image.get("id"), []) if c]
        meta = {k: v for k, v in image.items() if isinstance(v, (str, int, float, bool))}
        meta["image_id"], meta["captions"] = image.get("id"), found
        yield {"image": None, "path": str(Path(root) / str(image.get("file_name", ""))), "captions": found,
               "meta": meta, "where": where}


def count(data: dict) -> int:
    return len(data["images"])
