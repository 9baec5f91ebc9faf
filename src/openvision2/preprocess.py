"""Images travel as uint8 and are normalised on the device with ImageNet statistics (DESIGN.md §1.2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float (x - 255*mean) / (255*std)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def pil_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """Evaluation resize: bilinear (antialiased) to size x size, as the released open_clip configs
    ("squash"); returns uint8 [3, size, size]."""
    image = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return pil_to_uint8(image, size)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
