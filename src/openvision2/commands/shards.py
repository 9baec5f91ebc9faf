"""ov2 shards --image-dir DIR --captions FILE --out DIR   |   ov2 shards --fashion-mnist --out DIR
   ov2 shards --parquet FILES --out DIR   |   ov2 shards --coco captions_*.json --image-dir DIR --out DIR
   ov2 shards --img2dataset SHARDS --out DIR     (input formats: data/corpora/)"""

from __future__ import annotations

from ._options import add, add_json

NAME = "shards"
HELP = ("write WebDataset shards from an image folder and a captions CSV/JSONL, parquet files, COCO caption "
        "annotations, existing img2dataset shards, or Fashion-MNIST")

IMAGE_COLUMNS = ("image", "file", "filename", "path")
CAPTION_COLUMNS = ("caption", "text", "txt")


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory for the .tar shards and sizes.json")
    add(parser, "--image-dir", aliases=("--images",), metavar="DIR",
        help="folder the image paths of --captions, --coco (and path-only --parquet images) are relative to")
    parser.add_argument("--captions", help="CSV (with a header) or JSONL file: one image path and caption per row")
    parser.add_argument("--image-column", help=f"column of the image path (default: first of {', '.join(IMAGE_COLUMNS)})")
    parser.add_argument("--caption-column", help=f"column of the caption (default: first of {', '.join(CAPTION_COLUMNS)})")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    parser.add_argument("--per-shard", type=int, default=10_000, help="samples per shard (default: 10000)")
    parser.add_argument("--shard-size", help="also at most this many bytes per shard, e.g. 500MB or 1GiB")
    parser.add_argument("--parquet", nargs="+", metavar="FILE", help="parquet files, directories or globs with an "
                        "image column (bytes, or the datasets {bytes, path} struct) and a caption column")
    parser.add_argument("--coco", metavar="JSON", help="COCO caption annotations (captions_*.json); images in --image-dir")
    parser.add_argument("--img2dataset", metavar="SHARDS", help="existing WebDataset shards (a directory, "
                        "brace pattern or URLs) to check and re-shard; --caption-column: member or json key (txt)")
    parser.add_argument("--workers", type=int, help="processes checking and converting images (default: CPUs, <= 8)")
    parser.add_argument("--fashion-mnist", action="store_true",
                        help="convert Fashion-MNIST (idx files) into train-*.tar and test-*.tar")
    parser.add_argument("--source", default=None, help="Fashion-MNIST idx directory "
                        "(default: /usr/share/datasets/fashion-mnist, from the dataset-fashion-mnist package)")
    parser.add_argument("--limit", type=int, help="write at most this many samples (per split; default: all)")
    switches = {"--append": "add shards to a non-empty --out, numbered after the ones there (default: refuse)",
                "--allow-outside-images": "embed image paths that resolve outside --image-dir ('../x', '/abs/x', "
                                          "symlinks out of it); by default such rows are skipped and counted"}
    for flag, text in switches.items():
        parser.add_argument(flag, action="store_true", help=text)
    add_json(parser)


def read_rows(path: str) -> list[dict]:
    import csv
    import json

    from ..errors import UserError

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # a spreadsheet's "CSV UTF-8" starts with a BOM
            if path.endswith((".jsonl", ".json")):
                rows = []  # a row that is not a JSON object is kept here and skipped (counted) by the writer
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


def write_folder(args) -> dict:
    from pathlib import Path

    from ..data.corpora import folder, pick_column
    from ..errors import UserError

    if not args.image_dir or not args.captions:
        raise UserError("give --image-dir DIR and --captions FILE, --parquet, --coco, --img2dataset or --fashion-mnist")
    rows = read_rows(args.captions)
    if not rows:
        raise UserError(f"captions file {args.captions} has no rows")
    columns = list(next((row for row in rows if isinstance(row, dict)), {}))
    image_col = pick_column(columns, args.image_column, IMAGE_COLUMNS, "image", args.captions)
    caption_col = pick_column(columns, args.caption_column, CAPTION_COLUMNS, "caption", args.captions)
    root = Path(args.image_dir)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    result = write_corpus(args, folder.rows(rows, str(root), image_col, caption_col, args.allow_outside_images),
                          total=len(rows))
    if not result["samples"]:
        raise UserError(f"no sample written: every row of {args.captions} was skipped ({result['skipped']})")
    return result


def parse_size(text: str | None) -> int | None:
    """'500MB' -> 500_000_000, '1GiB' -> 2**30, '4096' -> 4096."""
    import re

    from ..errors import UserError

    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not match:
        raise UserError(f"--shard-size {text!r}: give a size such as 500MB, 1GiB or 100000000")
    number, unit, binary = match.groups()
    value = int(float(number) * (1024 if binary else 1000) ** " kmgt".index(unit or " "))
    if value < 1:
        raise UserError(f"--shard-size {text!r} must be at least 1 byte")
    return value


def write_corpus(args, rows, total=None, skipped=None) -> dict:
    from ..data.corpora.encode import default_workers, write_corpus as write

    workers = args.workers if args.workers is not None else default_workers()
    return write(rows, args.out, prefix=args.prefix, per_shard=args.per_shard, max_bytes=parse_size(args.shard_size),
                 workers=workers, total=total, limit=args.limit, extra_skipped=skipped, append=args.append)


def write_other_corpus(args) -> dict:
    """--parquet, --coco or --img2dataset (one module each in data/corpora)."""
    from collections import Counter

    from ..errors import UserError

    if sum(bool(x) for x in (args.parquet, args.coco, args.img2dataset)) > 1:
        raise UserError("give one input: --parquet, --coco or --img2dataset")
    skipped: Counter = Counter()
    if args.parquet:
        from ..data.corpora import parquet

        paths = parquet.files(args.parquet)
        result = write_corpus(args, parquet.rows(paths, args.image_column, args.caption_column, args.image_dir,
                                                       args.allow_outside_images),
                              total=parquet.count(paths))
        source = ", ".join(args.parquet)
    elif args.coco:
        from ..data.corpora import coco

        if not args.image_dir:
            raise UserError("--coco needs --image-dir DIR, the folder its file_name entries are in")
        data = coco.load(args.coco)
        result = write_corpus(args, coco.rows(data, args.image_dir, args.allow_outside_images), total=coco.count(data))
        source = args.coco
    else:
        from ..data.corpora import img2dataset

        rows = img2dataset.rows(args.img2dataset, args.caption_column or "txt", skipped)
        result = write_corpus(args, rows, total=img2dataset.count(args.img2dataset), skipped=skipped)
        source = args.img2dataset
    if not result["samples"]:
        raise UserError(f"no sample written: every sample of {source} was skipped ({result['skipped']})")
    return result


def run(args) -> int:
    import json

    from ..data.writer import prepare_out_dir
    from ..errors import UserError

    if args.per_shard < 1:
        raise UserError(f"--per-shard must be >= 1, got {args.per_shard}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1 (or left out for every sample), got {args.limit}")
    prepare_out_dir(args.out, args.append)
    if args.fashion_mnist:
        from ..data.fashion_mnist import DEFAULT_DIR, write_fashion_mnist

        splits = write_fashion_mnist(args.out, args.source or DEFAULT_DIR, args.per_shard, args.limit)
        result = {"out": str(args.out), "samples": {s: sum(c.values()) for s, c in splits.items()},
                  "shards": {s: c for s, c in splits.items()}}
    elif args.parquet or args.coco or args.img2dataset:
        result = write_other_corpus(args)
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
