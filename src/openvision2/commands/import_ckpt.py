"""ov2 import --from DIR --out CHECKPOINT_DIR"""

from __future__ import annotations

import json
import sys

from ._options import add_json

NAME = "import"
HELP = ("import an OpenVision encoder as an encoder-only checkpoint: the released vision-only weights "
        "(open_clip layout), or a timm / transformers export of one")


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="DIR",
                        help="an open_clip directory (open_clip_config.json + weights, e.g. a downloaded "
                             "UCSC-VLAA/openvision2-* repo), a timm hub directory or a transformers "
                             "ViTModel / CLIPVisionModel / SiglipVisionModel directory")
    parser.add_argument("--out", required=True, metavar="CHECKPOINT_DIR", help="checkpoint directory to write")
    add_json(parser)


def run(args) -> int:
    from ..interop import import_pretrained

    _, summary = import_pretrained(args.source, args.out)
    if "dropped_head" in summary:
        print(f"ov2 import: note: dropped the {summary['dropped_head']}", file=sys.stderr)
    if "dropped_proj" in summary:
        print(f"ov2 import: note: dropped the pooled-feature projection {summary['dropped_proj']} "
              "(OV2 has none; the patch tokens and the pooled feature before it are unchanged)", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"imported {summary['source']} {summary['encoder']} @ {summary['image_size']} px "
              f"({summary['parameters'] / 1e6:.1f} M parameters, encoder only) -> {summary['checkpoint']}")
    return 0
