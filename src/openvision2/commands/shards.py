"""ov2 shards --image-dir DIR --captions FILE --out DIR   |   ov2 shards --fashion-mnist --out DIR"""

from __future__ import annotations

from ._options import add, add_json

NAME = "shards"
HELP = "write WebDataset shards from an image folder and a captions CSV/JSONL, or from Fashion-MNIST"

IMAGE_COLUMNS = ("image", "file", "filename", "path")
CAPTION_COLUMNS = ("caption", "text", "txt")
COPIED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # stored as they are; others become PNG


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory for the .tar shards and sizes.json")
    add(parser, "--image-dir", aliases=("--images",), metavar="DIR",
        help="folder the captions file's image paths are relative to")
    parser.add_argument("--captions", help="CSV (with a header) or JSONL file: one image path and caption per row")
    parser.add_argument("--image-column", help=f"column of the image path (default: first of {', '.join(IMAGE_COLUMNS)})")
    parser.add_argument("--caption-column", help=f"column of the caption (default: first of {', '.join(CAPTION_COLUMNS)})")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    parser.add_argument("--per-shard", type=int, default=10_000, help="samples per shard (default: 10000)")
    parser.add_argument("--fashion-mnist", action="store_true",
                        help="convert Fashion-MNIST (idx files) into train-*.tar and test-*.tar")
    parser.add_argument("--source", default=None, help="Fashion-MNIST idx directory "
                        "(default: /usr/share/datasets/fashion-mnist, from the dataset-fashion-mnist package)")
    parser.add_argument("--limit", type=int, help="write at most this many samples (per split; default: all)")
    add_json(parser)


def read_rows(path: str) -> list[dict]:
    import csv
    import json

    from ..errors import UserError

    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith((".jsonl", ".json")):
                rows = []
                for number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as err:
                            raise UserError(f"{path} line {number} is not JSON: {err}") from None
                return rows
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"captions file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UserError(f"captions file {path} is not UTF-8 text") from None


def _column(rows: list[dict], chosen: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    from ..errors import UserError

    keys = list(rows[0]) if rows else []
    if chosen:
        if chosen not in keys:
            raise UserError(f"{path} has no column {chosen!r} (columns: {', '.join(keys)})")
        return chosen
    for name in candidates:
        if name in keys:
            return name
    raise UserError(f"{path} has no {what} column: name one with --{what}-column (columns: {', '.join(keys)})")


def write_folder(args) -> dict:
    import io
    import logging
    from pathlib import Path

    from PIL import Image

    from ..data.writer import ShardWriter
    from ..errors import UserError

    log = logging.getLogger("openvision2.data")
    if not args.image_dir or not args.captions:
        raise UserError("give --image-dir DIR and --captions FILE, or --fashion-mnist")
    rows = read_rows(args.captions)
    if not rows:
        raise UserError(f"captions file {args.captions} has no rows")
    image_col = _column(rows, args.image_column, IMAGE_COLUMNS, "image", args.captions)
    caption_col = _column(rows, args.caption_column, CAPTION_COLUMNS, "caption", args.captions)
    root = Path(args.image_dir)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    skipped: dict[str, int] = {}

    def skip(reason: str, row_number: int, detail: str) -> None:
        if reason not in skipped:
            log.warning("row %d skipped (%s): %s; further rows like it are counted, not logged", row_number, reason, detail)
        skipped[reason] = skipped.get(reason, 0) + 1

    written = 0
    with ShardWriter(args.out, prefix=args.prefix, per_shard=args.per_shard) as writer:
        for number, row in enumerate(rows[:args.limit] if args.limit else rows, 1):
            caption = row.get(caption_col)
            texts = [c for c in caption if isinstance(c, str) and c.strip()] if isinstance(caption, list) else (
                [caption] if isinstance(caption, str) and caption.strip() else [])
            if not texts:
                skip("empty_caption", number, f"no caption in {caption_col!r}")
                continue
            path = root / str(row.get(image_col, ""))
            try:
                data = path.read_bytes()
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
                    fmt = image.format
            except OSError as err:
                skip("unreadable_image", number, f"{path}: {err}")
                continue
            except Exception as err:  # PIL raises several types for damaged files
                skip("unreadable_image", number, f"{path}: {type(err).__name__}: {err}")
                continue
            ext = COPIED_FORMATS.get(fmt)
            if ext is None:
                buffer = io.BytesIO()
                with Image.open(io.BytesIO(data)) as image:
                    image.convert("RGB").save(buffer, "PNG")
                data, ext = buffer.getvalue(), "png"
            meta = {k: v for k, v in row.items() if k != image_col}
            meta["source_path"] = str(row.get(image_col))
            writer.write(f"{written:09d}", {ext: data, "txt": texts[0], "json": meta})
            written += 1
    if not written:
        raise UserError(f"no sample written: every row of {args.captions} was skipped ({skipped})")
    return {"out": str(args.out), "samples": written, "shards": writer.sizes, "skipped": skipped}


def run(args) -> int:
    import json

    from ..errors import UserError

    if args.per_shard < 1:
        raise UserError(f"--per-shard must be >= 1, got {args.per_shard}")
    if args.fashion_mnist:
        from ..data.fashion_mnist import DEFAULT_DIR, write_fashion_mnist

        splits = write_fashion_mnist(args.out, args.source or DEFAULT_DIR, args.per_shard, args.limit)
        result = {"out": str(args.out), "samples": {s: sum(c.values()) for s, c in splits.items()},
                  "shards": {s: c for s, c in splits.items()}}
    else:
        result = write_folder(args)
    if args.json:
        print(json.dumps(result))
    else:
        samples = result["samples"]
        counts = samples if isinstance(samples, dict) else {args.prefix: samples}
        for split, n in counts.items():
            shards = result["shards"][split] if isinstance(samples, dict) else result["shards"]
            print(f"{split}: {n} samples in {len(shards)} shards")
        for reason, n in result.get("skipped", {}).items():
            print(f"skipped {n} rows: {reason}")
        print(f"written to {result['out']} (sample counts in sizes.json)")
    return 0
