"""ov2 report RUN_DIR [--out DIR] [--images N] [--evals LIST] [--json]"""

from __future__ import annotations

from ._options import add_decoding, add_json, decoding_options, resolve_device

NAME = "report"
HELP = "write an HTML report of a run: training curves, evaluations, held-out images with their captions"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (metrics.jsonl, checkpoints/)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    parser.add_argument("--images", type=int, default=16, help="held-out images in the captioned grid")
    parser.add_argument("--evals", default="zeroshot,captions,probe",
                        help="evaluations of the latest checkpoint: comma list of zeroshot, captions, probe; "
                             "'' for none (default: all)")
    parser.add_argument("--eval-images", type=int, default=256, help="held-out images per evaluation")
    add_decoding(parser, seed_default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when torch sees a GPU)")
    add_json(parser)


def run(args) -> int:
    import json

    from ..errors import UserError
    from ..eval.report import build_report

    if args.images < 0 or args.eval_images < 1:
        raise UserError("--images must be >= 0 and --eval-images >= 1")
    device = str(resolve_device(args.device))
    result = build_report(args.run_dir, args.out, args.images, args.evals, device, args.eval_images,
                          **decoding_options(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"report: {result['html']}  ({len(result['plots'])} plots, {result['images']} captioned images)")
        for key, value in result["evaluations"].items():
            print(f"  {key}: {value:.4f}")
    return 0
