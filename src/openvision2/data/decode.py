"""Decode an image straight to its crop at the target size, at reduced resolution when that is enough.

The crop box is chosen on the ORIGINAL image size (read from the header, before any pixel is decoded),
so crop statistics are those of a full-size decode. Only then, for a JPEG whose box is much larger than
the target, PIL's draft mode asks libjpeg for a 1/2, 1/4 or 1/8 scale decode (the DCT does the
downscaling almost for free) that still leaves the box at least `size` pixels wide and high; the box is
mapped to the reduced image and resized with PIL's antialiased bilinear filter. At 84 px from a
photo-sized JPEG this skips most of the decoding work.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .badsamples import BadSample

# PIL's own default limit (about 89.5 Mpx); larger images are rejected as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the original image


def full_box(width: int, height: int) -> Box:
    return 0.0, 0.0, float(width), float(height)


def decode_crop(data: bytes, size: int, choose_box: Callable[[int, int], Box] = full_box,
                max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> Image.Image:
    """Bytes of a jpg/png/webp -> RGB PIL image of size x size showing `choose_box(width, height)`.
    Raises BadSample (not_image, too_many_pixels, corrupt_image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings (limit checked below), palette/EXIF warnings
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadSample("too_many_pixels", f"{width}x{height} > {max_pixels}")
            if width < 1 or height < 1:
                raise BadSample("corrupt_image", f"size {width}x{height}")
            left, top, right, bottom = choose_box(width, height)
            if draft and image.format == "JPEG":
                # The smallest DCT scale whose box is still >= size on both sides.
                wanted = (math.ceil(width * size / (right - left)), math.ceil(height * size / (bottom - top)))
                if wanted[0] < width and wanted[1] < height:
                    image.draft("RGB", wanted)
                    sx, sy = image.size[0] / width, image.size[1] / height
                    left, top, right, bottom = left * sx, top * sy, right * sx, bottom * sy
            if image.mode not in ("RGB", "L"):
                # transparency composited the way PIL does it (onto black), via RGBA
                image = (image.convert("RGBA") if "transparency" in image.info else image).convert("RGB")
            image = image.resize((size, size), Image.BILINEAR, box=(left, top, right, bottom))
            return image if image.mode == "RGB" else image.convert("RGB")
    except BadSample:
        raise
    except Image.DecompressionBombError as err:
        raise BadSample("too_many_pixels", str(err)) from None
    except UnidentifiedImageError:
        raise BadSample("not_image", "not a format PIL recognises") from None
    except Exception as err:  # truncated data, broken streams, bad headers: PIL raises many types
        raise BadSample("corrupt_image", f"{type(err).__name__}: {err}") from None


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W]."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
