"""Images travel as uint8 and are normalised on the device with ImageNet statistics (DESIGN.md §1.2).

Preprocess states that preprocessing in each library's words; it travels with every export (DESIGN.md §9.5)
and is every encoder's timm pretrained_cfg (models/vit.py)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(255*mean, 255*std) as [1, 3, 1, 1] tensors."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    return mean, std


# On an accelerator the statistics are made once per device: building them per call would be a
# host-to-device copy every micro-batch. On a CPU building them costs nothing, and a cache there would
# keep the fake tensors of `ov2 plan`'s fake step (which runs on "cpu") for the real runs after it.
_device_statistics = functools.cache(_statistics)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float (x - 255*mean) / (255*std)."""
    device = images.device
    mean, std = _statistics(device) if device.type == "cpu" else _device_statistics(device)
    return (images.float() - mean) / std


def pil_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """Evaluation resize: bilinear (antialiased) to size x size, as the released open_clip configs
    ("squash"); returns uint8 [3, size, size]."""
    image = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def load_image(path: str | Path, size: int, max_pixels: int | None = None) -> torch.Tensor:
    """An image file -> uint8 [3, size, size]; UserError for a missing, unreadable or too large
    (decompression bomb: over `max_pixels`, PIL's limit by default) file."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked here
            image = Image.open(path)
        with image:
            if limit and image.width * image.height > limit:
                raise UserError(f"image {path} is {image.width}x{image.height} pixels, over the limit of {limit} "
                                "(a decompression bomb?): resize it first")
            return pil_to_uint8(image, size)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as err:
        raise UserError(f"image {path} is too large (a decompression bomb?): {err}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


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
