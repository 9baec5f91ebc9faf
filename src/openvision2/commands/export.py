"""ov2 export --checkpoint DIR --format FORMAT --out DIR"""

from __future__ import annotations

import json

from ._options import add_checkpoint, add_json

NAME = "export"
HELP = "export a checkpoint's encoder (or its decoder) for timm, Hugging Face transformers or open_clip"

_FORMAT_HELP = ("timm: timm.create_model('local-dir:OUT', pretrained=True); "
                "hf: transformers ViTModel (AutoModel.from_pretrained); "
                "hf-clip: CLIPVisionModel, for models trained with pre_norm=true (LLaVA-1.5); "
                "hf-siglip: SiglipVisionModel, for models trained with class_token=false; "
                "open_clip: open_clip hf-hub layout (create_model('local-dir:OUT')); "
                "decoder: the caption decoder + tokenizer")


# Kept here (not imported from interop) so building the ov2 parser imports no torch; a test pins
# it to interop.export.FORMATS.
FORMATS = ("timm", "hf", "hf-clip", "hf-siglip", "open_clip", "decoder")


def add_arguments(parser) -> None:
    add_checkpoint(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help=_FORMAT_HELP)
    parser.add_argument("--out", required=True, help="new (or empty) directory to write")
    add_json(parser)


def run(args) -> int:
    from ..interop import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.format, args.out)
    files = sorted(p.name for p in out.iterdir())
    if args.json:
        print(json.dumps({"format": args.format, "out": str(out), "files": files}))
    else:
        print(f"wrote {args.format} export to {out}: {', '.join(files)}")
    return 0
