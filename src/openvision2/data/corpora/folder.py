"""An image folder plus a CSV (with a header) or JSONL file naming each image and its caption(s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def outside_skip(root: str, relative: str, where: str, allow_outside: bool) -> dict | None:
    """The skipped row for an image path that resolves outside `root` (`../x`, `/abs/x`, a symlink out
    of it), or None where it stays inside (or the user allowed it): a captions file must not be able to
    embed arbitrary files of the machine into shards that may be shared."""
    path = Path(root) / relative
    if allow_outside or path.resolve().is_relative_to(Path(root).resolve()):
        return None
    return {"skip": ("outside_images", f"{where}: {path} is outside --image-dir {root} "
                     "(pass --allow-outside-images to embed it anyway)")}


def rows(records: list, root: str, image_column: str, caption_column: str,
         allow_outside: bool = False) -> Iterator[dict]:
    """Every other column goes into the json member, with the image's path as `source_path`; a list
    in the caption column keeps its first caption as txt (and the whole list in the json). A record
    that is not an object, or (unless `allow_outside`) whose image resolves outside `root` (`../x`,
    `/abs/x`, a symlink out of it), becomes a skipped row."""
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            yield {"skip": ("not_an_object", f"row {number}: a JSON {type(record).__name__}, not an object "
                            "with named fields")}
            continue
        path = Path(root) / str(record.get(image_column, ""))
        refused = outside_skip(root, str(record.get(image_column, "")), f"row {number}", allow_outside)
        if refused:
            yield refused
            continue
        caption = record.get(caption_column)
        meta = {k: v for k, v in record.items() if k != image_column}
        meta["source_path"] = str(record.get(image_column))
        yield {"image": None, "path": str(path),
               "captions": caption if isinstance(caption, list) else [caption], "meta": meta,
               "where": f"row {number}"}
