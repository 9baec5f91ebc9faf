"""Preprocessing settings that travel with every export (DESIGN.md §9.5), in each library's words.

This project resizes the whole image to size x size, bilinear with antialiasing ("squash", as the
released open_clip configs), and normalises with ImageNet mean/std (preprocess.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..preprocess import MEAN, STD

PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    interpolation: str = "bilinear"
    resize_mode: str = "squash"

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        size = data["size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        return cls(size=int(size), mean=tuple(data.get("mean") or MEAN), std=tuple(data.get("std") or STD),
                   interpolation=data.get("interpolation") or "bilinear",
                   resize_mode=data.get("resize_mode") or "squash")

    def to_dict(self) -> dict:
        return asdict(self)

    def open_clip(self) -> dict:
        """open_clip_config.json's preprocess_cfg."""
        return dict(size=self.size, mean=list(self.mean), std=list(self.std), interpolation=self.interpolation,
                    resize_mode=self.resize_mode)

    def timm(self) -> dict:
        """timm's data_config (pretrained_cfg): crop_pct 1 and crop_mode squash = plain resize."""
        return dict(input_size=(3, self.size, self.size), interpolation=self.interpolation, mean=tuple(self.mean),
                    std=tuple(self.std), crop_pct=1.0, crop_mode="squash" if self.resize_mode == "squash" else "center")

    def hf(self, kind: str) -> dict:
        """preprocessor_config.json arguments for transformers' ViT / CLIP / SigLIP image processors.

        CLIP's form is shortest-edge resize + center crop because LLaVA reads size['shortest_edge']
        and crop_size (STYLE.md); on square images it equals the squash resize."""
        common = dict(do_resize=True, resample=PIL_RESAMPLE[self.interpolation], do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=list(self.mean), image_std=list(self.std))
        if kind == "clip":
            return dict(common, size={"shortest_edge": self.size}, do_center_crop=True,
                        crop_size={"height": self.size, "width": self.size}, do_convert_rgb=True)
        return dict(common, size={"height": self.size, "width": self.size})
