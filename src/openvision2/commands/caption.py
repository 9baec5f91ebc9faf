"""ov2 caption --checkpoint DIR IMAGE... [--decoding greedy|beam|sample ...] [--json]"""

from __future__ import annotations

NAME = "caption"
HELP = "print a caption for each image file (greedy by default; beam search or top-k / top-p sampling)"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decoding", default="greedy", choices=("greedy", "beam", "sample"),
                        help="greedy (default), beam search, or sampling")
    parser.add_argument("--beam-size", type=int, default=4, help="beams for --decoding beam (default: 4)")
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="beam: rank by log-likelihood / length**penalty (default 0: plain likelihood)")
    parser.add_argument("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: unseeded)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's text_len - 2")
    parser.add_argument("--eval-keep-ratio", type=float, default=None,
                        help="share of visual tokens the decoder sees (default: the checkpoint's eval_keep_ratio)")
    parser.add_argument("--no-cache", action="store_true", help="re-run the whole sequence each step (slower)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: per image its caption and log-likelihood")


def run(args) -> int:
    import json

    import torch

    from ..checkpoint import load_checkpoint
    from .eval import set_eval_keep_ratio
    from ..errors import UserError
    from ..generate import generate, greedy_caption
    from ..preprocess import load_image

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    set_eval_keep_ratio(model, args.eval_keep_ratio)
    size = model.config.image_size
    images = [load_image(path, size) for path in args.images]  # fail on a bad file before any work
    parallel = hasattr(model, "predict_caption_ids")  # OpenVision 1 captions all positions at once
    results = []
    for start in range(0, len(images), args.batch_size):
        batch = torch.stack(images[start:start + args.batch_size])
        paths = args.images[start:start + args.batch_size]
        if parallel:
            if args.decoding != "greedy":
                raise UserError("this checkpoint's decoder predicts every position at once: only greedy decoding")
            results += [{"image": p, "caption": c} for p, c in zip(paths, greedy_caption(model, tokenizer, batch))]
            continue
        out = generate(model, tokenizer, batch, strategy=args.decoding, beam_size=args.beam_size,
                       length_penalty=args.length_penalty, top_k=args.top_k, top_p=args.top_p,
                       temperature=args.temperature, seed=args.seed, max_new_tokens=args.max_new_tokens,
                       use_cache=not args.no_cache)
        results += [{"image": p, "caption": c, "log_likelihood": ll}
                    for p, c, ll in zip(paths, out.texts, out.log_likelihoods)]
    if args.json:
        print(json.dumps({"decoding": args.decoding, "captions": results}))
    else:
        for r in results:
            print(f"{r['image']}\t{r['caption']}")
    return 0
