"""ov2 flops [--model L/14 --res 224 --method openvision2|openvision1|cappa | --preset NAME] [--json]

Analytic forward FLOPs per image and parameter counts, per part (openvision2/flops.py explains the
counting, and which decoder is assumed when none is named)."""

from __future__ import annotations

import json

NAME = "flops"
HELP = "analytic forward FLOPs per image and parameter counts, per part, of a method at a model size"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", help="take the shape from a training preset (method, sizes, resolution)")
    parser.add_argument("--model", default=None, help="encoder, e.g. L/14, So400m/14, S/16 (default L/14)")
    parser.add_argument("--res", type=int, default=None, help="image resolution in pixels (default 224)")
    parser.add_argument("--method", default=None, help="openvision2 (default), openvision1 or cappa")
    parser.add_argument("--decoder", help="decoder size (default: L for L/14, So400m for So400m/14, else the "
                                          "encoder's size class)")
    parser.add_argument("--text-encoder", help="OpenVision 1 text encoder size (default: the decoder's)")
    parser.add_argument("--keep-ratio", type=float, help="OpenVision 2 visual-token keep ratio (default 0.35)")
    parser.add_argument("--text-passes", type=int, default=1,
                        help="texts per image through OpenVision 1's text encoder: 1 as the paper counts "
                             "(default), 2 for everything a training step runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def shape_from_args(args):
    from ..errors import UserError
    from ..flops import Shape, default_decoder

    if args.text_passes not in (1, 2):
        raise UserError(f"--text-passes must be 1 or 2, got {args.text_passes}")
    if args.preset:
        from ..train.presets import get_preset

        config = get_preset(args.preset)
        vocab = 32000 if config.tokenizer == "wordpiece" else config.bpe_vocab_size
        base = dict(method=config.method, encoder=config.encoder, decoder=config.decoder,
                    image_size=config.image_size, keep_ratio=config.keep_ratio, text_len=config.text_len,
                    alt_text_len=config.alt_text_len, vocab_size=vocab, text_encoder=config.text_encoder,
                    text_pos=config.text_pos == "learned")
    else:
        encoder = args.model or "L/14"
        base = dict(method="openvision2", encoder=encoder, decoder=default_decoder(encoder), image_size=224)
    overrides = {"method": args.method, "encoder": args.model, "image_size": args.res, "decoder": args.decoder,
                 "text_encoder": args.text_encoder, "keep_ratio": args.keep_ratio}
    base.update({k: v for k, v in overrides.items() if v is not None})
    if args.model and not args.decoder and not args.preset:
        base["decoder"] = default_decoder(args.model)
    return Shape(**base, text_passes=args.text_passes), args.decoder is None and not args.preset


def run(args) -> int:
    from ..flops import PUBLISHED_GFLOPS, count, default_decoder

    shape, decoder_assumed = shape_from_args(args)
    result = count(shape)
    out = result.to_dict()
    out["decoder_assumed"] = decoder_assumed
    published = PUBLISHED_GFLOPS.get((shape.method, shape.encoder, shape.image_size))
    paper_shape = (shape.decoder == default_decoder(shape.encoder) and shape.keep_ratio == 0.35
                   and shape.text_len == 128 and shape.alt_text_len == 80 and shape.vocab_size == 32000
                   and shape.text_passes == 1 and shape.text_encoder in ("", shape.decoder))
    if published is not None and paper_shape:
        out["published_gflops_per_image"] = published
        out["relative_to_published"] = out["gflops_per_image"] / published - 1
    if args.json:
        print(json.dumps(out))
        return 0
    how = " (assumed: DESIGN.md §2, §5.4)" if decoder_assumed else ""
    extra = (f", text encoder {shape.text_encoder or shape.decoder} x{shape.text_passes} text"
             if shape.method == "openvision1" else f", keep ratio {out['keep_ratio']:g}")
    print(f"{shape.method} {shape.encoder} @ {shape.image_size}px, decoder {shape.decoder}{how}{extra}, "
          f"vocab {shape.vocab_size}")
    print(f"{'part':14s} {'GFLOPs/image':>13s} {'params (M)':>11s}")
    for part in out["gflops_per_part"]:
        print(f"{part:14s} {out['gflops_per_part'][part]:13.2f} {out['params_per_part'][part] / 1e6:11.2f}")
    print(f"{'total':14s} {out['gflops_per_image']:13.2f} {out['params'] / 1e6:11.2f}")
    if "published_gflops_per_image" in out:
        print(f"published: {published:.2f} GFLOPs/image ({100 * out['relative_to_published']:+.1f}%)")
    return 0
