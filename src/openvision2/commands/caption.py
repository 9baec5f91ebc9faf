"""ov2 caption --checkpoint DIR IMAGE... [--decoding greedy|beam|sample ...] [--json]"""

from __future__ import annotations

from ._options import add_checkpoint, add_decoding, add_eval_keep_ratio, apply_eval_keep_ratio, decoding_options

NAME = "caption"
HELP = "print a caption for each image file (greedy by default; beam search or top-k / top-p sampling)"


def add_arguments(parser) -> None:
    add_checkpoint(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--batch-size", type=int, default=16, help="images decoded together")
    add_decoding(parser, seed_aliases=("--seed",))
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's text_len - 2")
    add_eval_keep_ratio(parser)
    parser.add_argument("--no-cache", action="store_true", help="re-run the whole sequence each step (slower)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: per image its caption and log-likelihood")


def run(args) -> int:
    import json

    import torch

    from ..checkpoint import load_checkpoint
    from ..errors import UserError
    from ..generate import generate
    from ..preprocess import load_image

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    apply_eval_keep_ratio(model, args.eval_keep_ratio)
    size = model.config.image_size
    images = [load_image(path, size) for path in args.images]  # fail on a bad file before any work
    results = []
    for start in range(0, len(images), args.batch_size):
        batch = torch.stack(images[start:start + args.batch_size])
        paths = args.images[start:start + args.batch_size]
        out = generate(model, tokenizer, batch, **decoding_options(args), max_new_tokens=args.max_new_tokens,
                       use_cache=not args.no_cache)
        results += [{"image": p, "caption": c, "log_likelihood": ll}
                    for p, c, ll in zip(paths, out.texts, out.log_likelihoods)]
    if args.json:
        print(json.dumps({"decoding": args.decoding, "captions": results}))
    else:
        for r in results:
            print(f"{r['image']}\t{r['caption']}")
    return 0
