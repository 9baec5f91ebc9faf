"""ov2 eval caption-accuracy --checkpoint DIR --shards 'test-{000000..000001}.tar' [--limit N] [--json]

An evaluation, so it is a target of `ov2 eval`; the top-level `ov2 caption-accuracy` is its old
name, still accepted but not listed."""

from __future__ import annotations

from ._options import add_checkpoint, add_json

NAME = "caption-accuracy"
HIDDEN = True
HELP = ("share of shard images whose greedy caption names their class and no other "
        "(e.g. Fashion-MNIST shards from `ov2 shards --fashion-mnist`)")


def add_arguments(parser) -> None:
    add_checkpoint(parser)
    parser.add_argument("--shards", required=True, help="labelled shards (their json member holds the class)")
    parser.add_argument("--classes", default="fashion-mnist",
                        help="'fashion-mnist' or a comma-separated list of class names (default: fashion-mnist)")
    parser.add_argument("--class-key", default="class", help="json key with the sample's class name (default: class)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most this many images (0: all)")
    parser.add_argument("--batch-size", type=int, default=256, help="images captioned together")
    parser.add_argument("--show", type=int, default=5, help="print this many example captions")
    add_json(parser)


def run(args) -> int:
    import json
    import sys
    from itertools import islice

    import torch

    from ..checkpoint import load_checkpoint
    from ..data.augment import EvalResize
    from ..data.badsamples import BadSample
    from ..data.fashion_mnist import CLASSES, caption_names_class
    from ..data.shards import ShardDataset
    from ..errors import UserError
    from ..generate import greedy_caption

    if args.limit < 0 or args.batch_size < 1 or args.show < 0:
        raise UserError(f"--limit must be >= 0, --batch-size >= 1 and --show >= 0 (got {args.limit}, "
                        f"{args.batch_size}, {args.show})")
    classes = CLASSES if args.classes == "fashion-mnist" else tuple(c.strip().lower() for c in args.classes.split(","))
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    dataset = ShardDataset(args.shards, EvalResize(model.config.image_size, draft=False), caption_key="",
                           shuffle=False, epochs=1, with_meta=True)

    def labelled(sample: dict) -> tuple:
        name = str(sample["meta"].get(args.class_key, "")).lower()
        if name not in classes:
            raise BadSample("missing_label", f"{args.class_key}={name!r} is not one of the classes")
        return sample["image"], classes.index(name)

    skipped: dict[str, int] = {}
    reader = dataset.ordered(labelled, skipped)
    samples = islice(reader, args.limit) if args.limit else reader
    correct = total = 0
    examples = []
    while batch := list(islice(samples, args.batch_size)):
        captions = greedy_caption(model, tokenizer, torch.stack([image for image, _ in batch]))
        for caption, (_, label) in zip(captions, batch):
            hit = caption_names_class(caption, label, classes)
            correct += hit
            if len(examples) < args.show:
                examples.append({"caption": caption, "class": classes[label], "correct": bool(hit)})
        total += len(batch)
        print(f"{total} images: {correct / total:.1%} correct", file=sys.stderr, flush=True)
    reader.close()  # fills `skipped`
    if not total:
        raise UserError(f"no labelled sample in {args.shards}" + (f" (skipped: {skipped})" if skipped else ""))
    result = {"images": total, "correct": correct, "accuracy": correct / total, "examples": examples,
              "skipped": skipped}
    if args.json:
        print(json.dumps(result))
    else:
        for e in examples:
            print(f"[{'ok' if e['correct'] else 'wrong'}] {e['class']}: {e['caption']}")
        print(f"captions naming the correct class: {correct}/{total} = {correct / total:.1%}")
        for reason, n in sorted(skipped.items()):
            print(f"skipped {n} samples: {reason}")
    return 0

