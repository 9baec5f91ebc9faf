"""ov2 caption --checkpoint DIR IMAGE..."""

from __future__ import annotations

NAME = "caption"
HELP = "print a greedy caption for each image file"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--batch-size", type=int, default=16)


def run(args) -> int:
    import torch

    from ..checkpoint import load_checkpoint
    from ..generate import greedy_caption
    from ..preprocess import load_image

    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    size = model.config.image_size
    images = [load_image(path, size) for path in args.images]  # fail on a bad file before any work
    for start in range(0, len(images), args.batch_size):
        batch = torch.stack(images[start:start + args.batch_size])
        for path, caption in zip(args.images[start:], greedy_caption(model, tokenizer, batch)):
            print(f"{path}\t{caption}")
    return 0
