"""Turn one image file into the model's input tensor, or into a readable reason why not.

Decoding follows the evaluation preprocessing of EfficientNet: a centred square crop of
``crop_fraction`` of the short side, resized with bicubic interpolation. Large JPEGs are first
reduced in the DCT domain (``draft``), which is many times faster than a full decode and leaves at
least the crop's resolution to resample from. ``BATCHCLF_FULL_DECODE=1`` turns that off; it exists
only so the benchmark can measure what ``draft`` saves. Other formats cannot be drafted: a crop at
least ``REDUCING_GAP`` times the input size is first shrunk by a whole factor (Pillow's ``reduce``,
a box average) and then resampled, 1.2-1.4× faster on a 12-megapixel PNG or WebP and within 2 of
255 of the fair resampling (mean 0.14). A drafted JPEG is never that much larger, so its pixels are
unchanged.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .fsutil import content_digest

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
    size: int | None = None  # the size and mtime (µs) of the bytes decoded, read with them
    mtime: int | None = None
    content_hash: str | None = None  # BLAKE2b-128 of those bytes, when asked for


class ImageDecodeError(Exception):
    """The file is not an image we can score; the message is what goes in the ``error`` column.

    ``size`` and ``mtime`` describe the bytes that were read, when the file could be read at all.
    """

    def __init__(self, message: str, size: int | None = None, mtime: int | None = None):
        super().__init__(message)
        self.size, self.mtime = size, mtime


READ_ATTEMPTS = 3
REDUCING_GAP = 3.0  # Pillow: from 3 on, "indistinguishable from fair resampling in most cases"


@dataclass(frozen=True)
class FileContent:
    data: bytes
    size: int
    mtime: int  # µs


def read_file(path: str) -> FileContent:
    """The file's bytes with the size and mtime they were read at.

    The file is checked before it is opened (a FIFO would block) and its status is taken from the
    open descriptor before and after reading: a file rewritten while it is read is read again, so
    the size and mtime recorded always describe the bytes that are scored.
    """
    _check_regular_file(path)
    for _ in range(READ_ATTEMPTS):
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(descriptor, "rb") as stream:
            before = os.fstat(descriptor)
            if not stat.S_ISREG(before.st_mode):
                raise ImageDecodeError("not a regular file: it changed kind while being opened")
            data = stream.read()
            after = os.fstat(descriptor)
        signature = (after.st_size, after.st_mtime_ns, after.st_ino)
        if signature == (before.st_size, before.st_mtime_ns, before.st_ino) and len(data) == after.st_size:
            return FileContent(data, after.st_size, after.st_mtime_ns // 1000)
    raise ImageDecodeError(
        f"the file kept changing while being read ({READ_ATTEMPTS} tries); it is scored again on the next run",
        after.st_size,
        after.st_mtime_ns // 1000,
    )


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


def decode_image(path: str, preprocessing: Preprocessing, content_hash: bool = False, read=None) -> DecodedImage:
    """Read, decode, orient, crop and resize one image; raise ``ImageDecodeError`` with a reason.

    ``read`` fetches the bytes (``read_file`` for a local path; object storage passes its own).
    """
    size = preprocessing.image_size
    content = None
    try:
        content = (read or read_file)(path)
        with Image.open(io.BytesIO(content.data)) as image:
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
            resample = Image.Resampling[preprocessing.interpolation.upper()]
            resized = image.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)
            pixels = np.asarray(resized, dtype=np.uint8)
    except ImageDecodeError as error:
        if content is None:
            raise
        raise ImageDecodeError(str(error), content.size, content.mtime) from None
    except Exception as error:
        raise _reason(error, path, content) from None
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    digest = content_digest((content.data,)) if content_hash else None
    return DecodedImage(pixels, width, height, content.size, content.mtime, digest)


def _reason(error: Exception, path: str, content: FileContent | None) -> ImageDecodeError:
    """The ``error`` column's text for an exception raised while reading or decoding."""
    message = _message(error, content)
    if content is not None:
        return ImageDecodeError(message, content.size, content.mtime)
    try:  # the file could not be read: still record what it is, when it can be stat'ed
        status = os.stat(path)
        return ImageDecodeError(message, status.st_size, status.st_mtime_ns // 1000)
    except OSError:
        return ImageDecodeError(message)


def _message(error: Exception, content: FileContent | None) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found (deleted during the run, or a broken symlink)"
    if isinstance(error, PermissionError):
        return "permission denied; make the file readable"
    if isinstance(error, IsADirectoryError):
        return "not a regular file: a directory"
    if isinstance(error, Image.DecompressionBombError):
        return f"decompression bomb refused: {error}"
    if isinstance(error, UnidentifiedImageError):
        if content is not None and not content.data:
            return "empty file (0 bytes)"
        return "not a recognised image format (corrupt, or another kind of file with an image extension)"
    if isinstance(error, MemoryError):
        return "out of memory while decoding"
    if isinstance(error, OSError):
        if error.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself)"
        if "truncated" in str(error):
            return f"truncated file: {error}"
        return f"cannot decode: {error.strerror or error}"
    return f"cannot decode: {type(error).__name__}: {error}"  # a malformed file can make a decoder raise anything


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


ImageFile.LOAD_TRUNCATED_IMAGES = False
