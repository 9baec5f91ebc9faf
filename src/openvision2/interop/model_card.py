"""The README.md every export carries: a Hugging Face model card (YAML metadata, then prose) naming the
library that loads it, the license, tags, the preprocessing, a load snippet and where it came from."""

from __future__ import annotations

import json

from ..preprocess import Preprocess
from .spec import EncoderSpec

LICENSE = "apache-2.0"  # this project's (pyproject.toml, LICENSE)
PAPER = "https://arxiv.org/abs/2509.01644"

LIBRARY = {"timm": "timm", "hf": "transformers", "hf-clip": "transformers", "hf-siglip": "transformers",
           "open_clip": "open_clip", "decoder": "openvision2"}

_LOAD = {
    "timm": '''import timm

model = timm.create_model("local-dir:{dir}", pretrained=True).eval()   # or "hf-hub:ORG/REPO" once uploaded
config = timm.data.resolve_data_config(model=model)                      # the preprocessing above
transform = timm.data.create_transform(**config)
pooled = model(transform(image)[None])                                  # [1, {width}]
tokens = model.forward_features(transform(image)[None])[:, model.num_prefix_tokens:]   # patch tokens''',
    "hf": '''from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{dir}").eval()          # a ViTModel
processor = AutoImageProcessor.from_pretrained("{dir}")
out = model(**processor(images=image, return_tensors="pt"))
tokens = out.last_hidden_state[:, 1:]                      # patch tokens (hidden_states[-1]: before the final norm)''',
    "hf-clip": '''from transformers import CLIPImageProcessor, CLIPVisionModel

model = CLIPVisionModel.from_pretrained("{dir}").eval()    # LLaVA-1.5: --vision_tower /abs/path/{dir}
processor = CLIPImageProcessor.from_pretrained("{dir}")
tokens = model(**processor(images=image, return_tensors="pt")).last_hidden_state[:, 1:]''',
    "hf-siglip": '''from transformers import AutoImageProcessor, SiglipVisionModel

model = SiglipVisionModel.from_pretrained("{dir}").eval()
processor = AutoImageProcessor.from_pretrained("{dir}")
tokens = model(**processor(images=image, return_tensors="pt")).last_hidden_state   # no CLS token''',
    "open_clip": '''import open_clip

model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{dir}")   # or "hf-hub:ORG/REPO"
pooled, tokens = model.visual(preprocess(image)[None])     # the text tower is an all-zero placeholder''',
    "decoder": '''import timm
from openvision2.generate import greedy_caption
from openvision2.interop import load_captioner

tower = timm.create_model("local-dir:ENCODER_EXPORT", pretrained=True)   # any export of the same encoder
captioner, tokenizer = load_captioner("{dir}", tower)
greedy_caption(captioner, tokenizer, uint8_images)   # uint8 [B, 3, {size}, {size}]''',
}


def model_card(fmt: str, spec: EncoderSpec, preprocess: Preprocess, meta: dict, source: str | None,
               directory_name: str) -> str:
    library = LIBRARY[fmt]
    imported = "imported_from" in meta
    tags = ["openvision2", "vision", "vit", "image-feature-extraction", library]
    header = {"library_name": library, "license": "other" if imported else LICENSE, "tags": tags,
              "pipeline_tag": "image-to-text" if fmt == "decoder" else "image-feature-extraction"}
    # a YAML block in JSON's syntax (JSON is YAML), so no YAML writer is needed
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in header.items())
    model = meta.get("model", {})
    what = ("the caption decoder and tokenizer of" if fmt == "decoder" else "the image encoder of")
    origin = [f"- checkpoint: `{source}`" if source else None,
              f"- training step: {meta['step']}" if "step" in meta else None,
              f"- imported from: `{meta['imported_from']}` ({meta.get('imported_format', '?')})" if imported else None,
              f"- method: {model.get('method', 'openvision2')}, encoder {model.get('encoder', '?')}, decoder "
              f"{model.get('decoder', '?')}, trained at {model.get('image_size', spec.image_size)} px"]
    license_note = ("These weights were imported from a release: its own license applies; set `license` above "
                    "to it before publishing." if imported else
                    f"The code that trained and exported these weights is {LICENSE.title()}-licensed; set "
                    "`license` above to your weights' terms if they differ (e.g. the training data's).")
    lines = [
        "---", front, "---", "",
        f"# OpenVision 2 {model.get('encoder') or spec.encoder_name()} @ {spec.image_size} px ({fmt} export)", "",
        f"This directory holds {what} an [OpenVision 2]({PAPER}) model (caption-only generative pretraining "
        f"of a ViT), written by `ov2 export --format {fmt}` for **{library}**.", "",
        "## Preprocessing", "",
        f"Resize the whole image to {preprocess.size} x {preprocess.size} ({preprocess.interpolation}, "
        f"antialiased, \"{preprocess.resize_mode}\": no crop), scale to [0, 1], then normalise with mean "
        f"{tuple(preprocess.mean)} and std {tuple(preprocess.std)}. The library's own config files in this "
        "directory record the same settings.", "",
        "## Load it", "", "```python", _LOAD[fmt].format(dir=directory_name, width=spec.width, size=spec.image_size),
        "```", "",
        "## Source", "", *[line for line in origin if line], "",
        "## License", "", license_note, "",
    ]
    return "\n".join(lines)
