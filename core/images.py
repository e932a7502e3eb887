"""Decoding images from outside: uploads, exemplars, images to check.

One place turns whatever arrives into an 8-bit RGB image or a clear refusal: truncated or
empty files, decompression bombs, SVG, CMYK, 16-bit and float images, alpha, palettes,
animations and EXIF rotations all reach the checks in the same form.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidInputError

ACCEPTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# Images over this many pixels are refused before their pixels are decoded.
DEFAULT_MAX_PIXELS = 40_000_000
# R, G, B weights of luma (ITU-R BT.601), as PDQ and the keypoint matcher weigh them.
LUMA = np.array([0.299, 0.587, 0.114])
# Transparent areas are shown on white, as a viewer would show them on a page.
_BACKGROUND = (255, 255, 255)
# PIL's own bomb guard would refuse (or mislabel) sizes our limit allows; every untrusted
# image is decoded here, where the size is checked from the header before any pixel.
Image.MAX_IMAGE_PIXELS = None


class ImageError(InvalidInputError):
    code = "invalid_image"


def _refuse(detail: str, field: str) -> ImageError:
    return ImageError(detail, field=field)


def decode_image(
    data: bytes, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """An RGB, 8-bit, upright image; the first frame of an animation."""
    if not data:
        raise _refuse("the file is empty", field)
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")):
        raise _refuse(f"SVG is not accepted (it can hide anything); send {ACCEPTED}", field)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width <= 0 or height <= 0:
            raise _refuse(f"the image has no pixels ({width}x{height})", field)
        if width * height > max_pixels:
            raise _refuse(
                f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                f"at most {max_pixels / 1e6:g} megapixels are accepted",
                field,
            )
        image.seek(0)
        image.load()
        return _normalise(ImageOps.exif_transpose(image) or image)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise _refuse(f"not a readable image; send {ACCEPTED}", field) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise _refuse(f"not a readable image: truncated or corrupt ({e})", field) from e


def _normalise(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale their actual range to 8 bits.
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
        image = Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8, the form the matchers take."""
    return np.asarray(image, dtype=np.uint8)
