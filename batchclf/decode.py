"""Turn one image file into the model's input tensor, or into a readable reason why not.

Decoding follows the evaluation preprocessing of EfficientNet: a centred square crop of
``crop_fraction`` of the short side, resized with bicubic interpolation. Large JPEGs are first
reduced in the DCT domain (``draft``), which is many times faster than a full decode and leaves at
least the crop's resolution to resample from. ``BATCHCLF_FULL_DECODE=1`` turns that off; it exists
only so the benchmark can measure what ``draft`` saves.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ORIENTATION_TAG = 0x0112
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    crop_fraction: float = 0.875
    interpolation: str = "bicubic"  # a Pillow resampling filter, by name: what the model was trained with


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (size, size, 3) uint8
    width: int  # upright size of the original image
    height: int


class ImageDecodeError(Exception):
    """The file is not an image we can score; the message is what goes in the ``error`` column."""


def to_rgb(image: Image.Image) -> Image.Image:
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
        _check_regular_file(path)
        with Image.open(path) as image:
            width, height = image.size
            # Checked here rather than through Pillow's warning filter, which is not thread-safe.
            if width * height > (Image.MAX_IMAGE_PIXELS or math.inf):
                raise ImageDecodeError(
                    f"decompression bomb refused: {width}x{height} pixels is more than "
                    f"{Image.MAX_IMAGE_PIXELS} (Pillow's limit)"
                )
            orientation = _orientation(image)
            # Draft reduces by powers of two while keeping at least the requested size.
            needed = math.ceil(size / preprocessing.crop_fraction)
            if os.environ.get("BATCHCLF_FULL_DECODE") != "1":
                image.draft("RGB", (needed, needed))
            image.seek(0)
            image.load()
            image = _upright(image, orientation)
            image = to_rgb(image)
            w, h = image.size
            crop = min(w, h) * preprocessing.crop_fraction
            box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
            resized = image.resize((size, size), Image.Resampling[preprocessing.interpolation.upper()], box=box)
            pixels = np.asarray(resized, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file not found (deleted during the run, or a broken symlink)") from None
    except PermissionError:
        raise ImageDecodeError("permission denied; make the file readable") from None
    except IsADirectoryError:
        raise ImageDecodeError("not a regular file: a directory") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified_reason(path)) from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageDecodeError("symlink loop (the link points back to itself)") from None
        if "truncated" in str(error):
            raise ImageDecodeError(f"truncated file: {error}") from None
        raise ImageDecodeError(f"cannot decode: {error.strerror or error}") from None
    except Exception as error:  # a malformed file can make a decoder raise almost anything
        raise ImageDecodeError(f"cannot decode: {type(error).__name__}: {error}") from None
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return DecodedImage(pixels=pixels, width=width, height=height)


def _check_regular_file(path: str) -> None:
    """Refuse FIFOs, devices and sockets before opening them: reading a FIFO would block forever."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    raise ImageDecodeError(f"not a regular file: {kind}")


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8); a damaged EXIF block means upright rather than an error."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    method = ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


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
