"""Turn one image file into the model's input tensor, or into a readable reason why not.

Decoding follows the evaluation preprocessing of EfficientNet: a centred square crop of
``crop_fraction`` of the short side, resized with bicubic interpolation. Large JPEGs are first
reduced in the DCT domain (``draft``), which is many times faster than a full decode and leaves at
least the crop's resolution to resample from.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ORIENTATION_TAG = 0x0112
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    crop_fraction: float = 0.875


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (size, size, 3) uint8
    width: int  # upright size of the original image
    height: int


class ImageDecodeError(Exception):
    """The file is not an image we can score; the message is what goes in the ``error`` column."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Every mode to 8-bit RGB; transparency is composited on white, 16-bit data scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(path: str, preprocessing: Preprocessing) -> DecodedImage:
    """Decode, orient, crop and resize one image; raise ``ImageDecodeError`` with a reason."""
    size = preprocessing.image_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(ORIENTATION_TAG, 1)
                # Draft reduces by powers of two while keeping at least the requested size.
                needed = math.ceil(size / preprocessing.crop_fraction)
                image.draft("RGB", (needed, needed))
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image)
                image = _to_rgb(image)
                w, h = image.size
                crop = min(w, h) * preprocessing.crop_fraction
                box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
                resized = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
                pixels = np.asarray(resized, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageDecodeError("file not found (deleted during the run, or a broken symlink)") from None
    except PermissionError:
        raise ImageDecodeError("permission denied; make the file readable") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified_reason(path)) from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        raise ImageDecodeError(f"cannot decode: {error}") from None
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return DecodedImage(pixels=pixels, width=width, height=height)


def _unidentified_reason(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except OSError as error:
        return f"cannot read file: {error.strerror}"
    if not head:
        return "empty file (0 bytes)"
    return "not a recognised image format (corrupt, or another kind of file with an image extension)"


ImageFile.LOAD_TRUNCATED_IMAGES = False
