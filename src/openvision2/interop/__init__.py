"""Interop with timm, Hugging Face transformers and open_clip (STYLE.md "Export formats").

- import: `load_open_clip(dir)` (in memory) / `import_open_clip(dir, out)` (a checkpoint directory)
  read the released OpenVision 2 vision-only weights (open_clip layout, SPEC §9.3);
- export: `export_checkpoint(checkpoint, fmt, out)` writes timm, hf (ViTModel), hf-clip
  (CLIPVisionModel), hf-siglip (SiglipVisionModel), open_clip or decoder directories;
- `load_captioner(decoder_dir, tower)` captions with an exported decoder over any exported encoder.
The libraries are imported only when a format needs them (pip extra `interop`).
"""

from .decoder_format import load_captioner, load_decoder
from .export import FORMATS, export_checkpoint, write_export
from .importer import import_open_clip, load_open_clip
from .preprocessing import Preprocess
from .spec import EncoderSpec

__all__ = ["EncoderSpec", "FORMATS", "Preprocess", "export_checkpoint", "import_open_clip", "load_captioner",
           "load_decoder", "load_open_clip", "write_export"]
