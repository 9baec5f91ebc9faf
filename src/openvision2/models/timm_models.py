"""The encoder family registered with timm (registered when openvision2.models is imported):

    import openvision2.models, timm
    encoder = timm.create_model("openvision2_vit_large_patch14_224")            # random init, as create_encoder
    encoder = timm.create_model("openvision2_vit_tiny_patch16_224", pretrained=True,
                                pretrained_cfg_overlay=dict(file="export/ov2-timm/model.safetensors"))

No weights are registered (the released ones are open_clip checkpoints: `ov2 import` reads them);
`pretrained=True` loads a file named by the overlay, e.g. an `ov2 export --format timm`. The
pretrained_cfg is the encoder's true preprocessing (models/vit.py pretrained_cfg).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..errors import UserError
from .vit import create_encoder, pretrained_cfg

# timm size word and patch -> (our encoder name, the image sizes registered): the published encoders
# (models/registry.py) at 224 px and at the higher resolutions of the released OV2 towers (DESIGN.md §9.1).
VARIANTS = {
    "tiny_patch16": ("Ti/16", (224,)),
    "small_patch16": ("S/16", (224,)),
    "base_patch16": ("B/16", (224,)),
    "large_patch14": ("L/14", (224, 336)),
    "so400m_patch14": ("So400m/14", (224, 384)),
    "huge_patch14": ("H/14", (224, 336)),
    "giant_patch14": ("g/14", (224,)),
}
ENCODERS = {f"openvision2_vit_{variant}_{size}": (encoder, size)
            for variant, (encoder, sizes) in VARIANTS.items() for size in sizes}
default_cfgs = generate_default_cfgs({name: pretrained_cfg(size) for name, (_, size) in ENCODERS.items()})


def _build(encoder: str, *, img_size: int, num_classes: int = 0, in_chans: int = 3, global_pool: str = "avg",
           **kwargs):
    if num_classes or in_chans != 3 or global_pool != "avg":
        raise UserError("OpenVision encoders are feature extractors on RGB images: num_classes=0, in_chans=3, "
                        "global_pool='avg'")
    return create_encoder(encoder, img_size, **kwargs)


def _load_filter(state: dict, model) -> dict:
    """A timm-layout file (an `ov2 export --format timm`) stores what our encoder computes: check and drop it."""
    if "pos_embed" not in state:
        return state
    from ..interop.spec import EncoderSpec
    from ..interop.timm_format import from_timm

    return from_timm(state, EncoderSpec.of(model, model.patch_embed.img_size[0]))


def _entrypoint(name: str, encoder: str, size: int):
    def build(pretrained: bool = False, **kwargs):
        image_size = kwargs.pop("img_size", size)
        # the pretrained_cfg follows the size asked for, as create_encoder's does
        overlay = {**(kwargs.pop("pretrained_cfg_overlay", None) or {}),
                   "input_size": (3, image_size, image_size)}
        return build_model_with_cfg(lambda **kw: _build(encoder, **kw), name, pretrained,
                                    pretrained_cfg_overlay=overlay, pretrained_filter_fn=_load_filter,
                                    img_size=image_size, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"OpenVision 2 encoder {encoder} at {size} px (openvision2.create_encoder({encoder!r}, {size}))."
    return build


for _name, (_encoder, _size) in ENCODERS.items():
    globals()[_name] = register_model(_entrypoint(_name, _encoder, _size))
