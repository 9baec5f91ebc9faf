"""Interop with timm, Hugging Face transformers and open_clip (STYLE.md "Export formats").

- import: `load_pretrained(dir)` (in memory) / `import_pretrained(dir, out)` (a checkpoint directory)
  read the released OpenVision 2 vision-only weights (open_clip layout, DESIGN.md §9.3) and timm or
  transformers towers of the same architecture (e.g. tuned inside a VLM);
- export: `export_checkpoint(checkpoint, fmt, out)` writes timm, hf (ViTModel), hf-clip
  (CLIPVisionModel), hf-siglip (SiglipVisionModel), open_clip or decoder directories;
- `load_captioner(decoder_dir, tower)` captions with an exported decoder over any exported encoder.
The libraries are imported only when a format needs them (pip extra `interop`).
"""

from .decoder_format import load_captioner, load_decoder
from .export import FORMATS, export_checkpoint, write_export
from .importer import import_open_clip, import_pretrained, load_open_clip, load_pretrained
from ..preprocess import Preprocess
from .spec import EncoderSpec

__all__ = ["EncoderSpec", "FORMATS", "Preprocess", "export_checkpoint", "import_open_clip", "load_captioner",
           "load_decoder", "load_open_clip", "import_pretrained", "load_pretrained", "write_export"]
