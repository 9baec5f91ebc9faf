"""ov2 flops [--encoder L/14 --image-size 224 --method openvision2|openvision1|cappa | --preset NAME] [--json]

Analytic forward FLOPs per image and parameter counts, per part (openvision2/flops.py explains the
counting, and which decoder is assumed when none is named)."""

from __future__ import annotations

import json

from ._options import add, add_json

NAME = "flops"
HELP = "analytic forward FLOPs per image and parameter counts, per part, of a method at a model size"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", help="take the shape from a training preset (method, sizes, resolution)")
    add(parser, "--encoder", aliases=("--model",), help="encoder, e.g. L/14, So400m/14, S/16 (default L/14)")
    add(parser, "--image-size", aliases=("--res",), type=int, help="image size in pixels (default 224)")
    parser.add_argument("--method", default=None, help="openvision2 (default), openvision1 or cappa")
    parser.add_argument("--decoder", help="decoder size (default: L for L/14, So400m for So400m/14, else the "
                                          "encoder's size class)")
    parser.add_argument("--text-encoder", help="OpenVision 1 text encoder size (default: the decoder's)")
    parser.add_argument("--keep-ratio", type=float, help="OpenVision 2 visual-token keep ratio (default 0.35)")
    parser.add_argument("--text-passes", type=int, default=1,
                        help="texts per image through OpenVision 1's text encoder: 1 as the paper counts "
                             "(default), 2 for everything a training step runs")
    add_json(parser)


def shape_from_args(args):
    """(the ModelConfig to count, whether the decoder was assumed)."""
    from dataclasses import replace

    from ..errors import UserError
    from ..flops import default_decoder
    from ..models.config import ModelConfig

    if args.text_passes not in (1, 2):
        raise UserError(f"--text-passes must be 1 or 2, got {args.text_passes}")
    if args.preset:
        from ..train.presets import get_preset

        config = get_preset(args.preset)
        base = replace(config.model, vocab_size=config.data.expected_vocab_size)
    else:
        encoder = args.encoder or "L/14"
        base = ModelConfig(encoder=encoder, decoder=default_decoder(encoder), image_size=224)
    overrides = {"method": args.method, "encoder": args.encoder, "image_size": args.image_size, "decoder": args.decoder,
                 "text_encoder": args.text_encoder, "keep_ratio": args.keep_ratio}
    changes = {k: v for k, v in overrides.items() if v is not None}
    if args.encoder and not args.decoder and not args.preset:
        changes["decoder"] = default_decoder(args.encoder)
    return replace(base, **changes), args.decoder is None and not args.preset


def run(args) -> int:
    from ..flops import PUBLISHED_GFLOPS, default_decoder
    from ..methods import count_flops

    shape, decoder_assumed = shape_from_args(args)
    result = count_flops(shape, args.text_passes)
    shape = result.config
    out = result.to_dict()
    out["decoder_assumed"] = decoder_assumed
    published = PUBLISHED_GFLOPS.get((shape.method, shape.encoder, shape.image_size))
    paper_shape = (shape.decoder == default_decoder(shape.encoder) and shape.keep_ratio == 0.35
                   and shape.text_len == 128 and shape.alt_text_len == 80 and shape.vocab_size == 32000
                   and args.text_passes == 1 and shape.text_encoder in ("", shape.decoder))
    if published is not None and paper_shape:
        out["published_gflops_per_image"] = published
        out["relative_to_published"] = out["gflops_per_image"] / published - 1
    if args.json:
        print(json.dumps(out))
        return 0
    how = " (assumed: DESIGN.md §2, §5.4)" if decoder_assumed else ""
    extra = (f", text encoder {shape.text_encoder or shape.decoder} x{args.text_passes} text"
             if "text_encoder" in out else f", keep ratio {out['keep_ratio']:g}")
    print(f"{shape.method} {shape.encoder} @ {shape.image_size}px, decoder {shape.decoder}{how}{extra}, "
          f"vocab {shape.vocab_size}")
    print(f"{'part':14s} {'GFLOPs/image':>13s} {'params (M)':>11s}")
    for part in out["gflops_per_part"]:
        print(f"{part:14s} {out['gflops_per_part'][part]:13.2f} {out['params_per_part'][part] / 1e6:11.2f}")
    print(f"{'total':14s} {out['gflops_per_image']:13.2f} {out['params'] / 1e6:11.2f}")
    if "published_gflops_per_image" in out:
        print(f"published: {published:.2f} GFLOPs/image ({100 * out['relative_to_published']:+.1f}%)")
    return 0
