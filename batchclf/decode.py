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
import threading
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import StorageError
from .exif import ExifFields, read_exif
from .fsutil import NotRegularFileError, change_marks, content_digest, open_regular
from .paths import IMAGE_FORMATS

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
    inode: int | None = None  # the file's change marks when it was read (fsutil.change_marks)
    ctime: int | None = None
    exif: ExifFields | None = None  # with ``--exif``: what the photo's EXIF says (exif.py)


class ImageDecodeError(Exception):
    """The file is not an image we can score; the message is what goes in the ``error`` column.

    ``size`` and ``mtime`` describe the bytes that were read, when the file could be read at all.
    """

    def __init__(self, message: str, size=None, mtime=None, inode=None, ctime=None):
        super().__init__(message)
        self.size, self.mtime, self.inode, self.ctime = size, mtime, inode, ctime


READ_ATTEMPTS = 3
MAX_FILE_BYTES = 1 << 30  # 1 GiB: above any image Pillow's pixel limit lets through; padding is never read
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# What Pillow may decode: the formats of the extensions the walk takes (a phone's JPEG opens as MPO).
# HEIF joins them once pillow-heif's opener is registered, when the first HEIF file is met.
DECODED_FORMATS = tuple(dict.fromkeys(f for f in IMAGE_FORMATS.values() if f != "HEIF"))
# The ISO-BMFF brands pillow-heif decodes (a ``mif1``/``msf1`` file may be AVIF: Pillow tries that first).
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
HEIF_MISSING = 'cannot decode HEIC/HEIF without the heif extra: pip install "batchclf[heif]"'
# Formats named in the error row of a file that is not one of those: (offset, magic bytes, name).
# Nothing here is ever decoded.
OTHER_FORMATS = (
    (0, b"%!PS", "PostScript"),
    (0, b"\xc5\xd0\xd3\xc6", "PostScript (binary EPS)"),
    (0, b"%PDF", "PDF"),
    (0, b"<?xml", "XML (an SVG?)"),
    (0, b"<svg", "SVG"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "gzip data"),
    (0, b"\x7fELF", "an executable (ELF)"),
    (0, b"icns", "an Apple icon (ICNS)"),
    (0, b"\x00\x00\x01\x00", "a Windows icon (ICO)"),
    (0, b"DDS ", "a DirectDraw surface (DDS)"),
    (0, b"SIMPLE  =", "FITS"),
    (0, b"qoif", "QOI"),
)
HEAD_BYTES = 64  # enough for every signature in OTHER_FORMATS
REDUCING_GAP = 3.0  # Pillow: from 3 on, "indistinguishable from fair resampling in most cases"


@dataclass(frozen=True)
class FileContent:
    data: bytes
    size: int
    mtime: int  # µs
    inode: int | None = None  # fsutil.change_marks, for a local file
    ctime: int | None = None

    @property
    def signature(self) -> tuple:
        """Size, mtime, inode and ctime: what a row records of the bytes it was made from."""
        return self.size, self.mtime, self.inode, self.ctime


def read_file(path: str) -> FileContent:
    """The file's bytes with the size and mtime they were read at.

    Only a regular file is read (``fsutil.open_regular``: a FIFO or a device is refused, never
    waited on), and only up to ``MAX_FILE_BYTES``. Its status is taken from the open descriptor
    before and after reading: a file rewritten while it is read is read again, so the size and
    mtime recorded always describe the bytes that are scored.
    """
    for _ in range(READ_ATTEMPTS):
        with os.fdopen(open_regular(path), "rb") as stream:
            before = os.fstat(stream.fileno())
            if before.st_size > MAX_FILE_BYTES:
                raise ImageDecodeError(
                    f"file too large: {before.st_size} bytes, more than the {MAX_FILE_BYTES} bytes "
                    "batchclf reads for one image",
                    before.st_size,
                    before.st_mtime_ns // 1000,
                    *change_marks(before),
                )
            data = stream.read(MAX_FILE_BYTES + 1)
            after = os.fstat(stream.fileno())
        signature = (after.st_size, after.st_mtime_ns, after.st_ino)
        if signature == (before.st_size, before.st_mtime_ns, before.st_ino) and len(data) == after.st_size:
            return FileContent(data, after.st_size, after.st_mtime_ns // 1000, *change_marks(after))
    raise ImageDecodeError(
        f"the file kept changing while being read ({READ_ATTEMPTS} tries); it is scored again on the next run",
        after.st_size,
        after.st_mtime_ns // 1000,
        *change_marks(after),
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Every mode to 8-bit RGB; transparency is composited on white, 16-bit data scaled down.

    16-bit, 32-bit and float pixels are scaled in their own array, in place: a 16-bit image costs
    about twice its pixels' size on the way (the copy out of Pillow), not the dozen times that
    float64 copies took.
    """
    if image.mode in WIDE_MODES:
        image = Image.fromarray(_to_uint8(np.array(image), image.mode), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """A wide single-channel array as 0-255: 16-bit data (or any value above 255) over 0-65535."""
    if mode.startswith("I;16"):
        return np.right_shift(array, 8, out=array).astype(np.uint8)
    peak = 65535 if array.max(initial=0) > 255 else 255
    if array.dtype.kind == "f":
        np.multiply(array, 255.0 / peak, out=array)
    elif peak != 255:
        np.multiply(array, 255, out=array)  # int32: 65535 * 255 fits
        np.floor_divide(array, peak, out=array)
    return np.clip(array, 0, 255, out=array).astype(np.uint8)


def open_image(source: bytes | BinaryIO) -> Image.Image:
    """Open image bytes (or a seekable binary stream) with the decoders of the formats batchclf walks,
    and no other.

    Pillow picks a decoder by content; left to itself it would hand a PostScript file named ``.jpg``
    to Ghostscript. A file of another format is refused, saying what it appears to be. Every image
    batchclf decodes, for the model or for a report's thumbnail, is opened here.

    The decoder is handed the whole file in one call rather than Pillow's 64 KiB at a time: it lets go
    of the GIL while it decodes, and takes it back after each call, so with other threads busy in Python
    (Dask, the scoring loop) a 12-megapixel JPEG waited its turn a dozen times, ~120 instead of ~37 ms
    (docs/performance.md, Decoding beside Python threads).
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    head = stream.read(HEAD_BYTES)
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    if not head:
        raise ImageDecodeError("empty file (0 bytes)")
    heif = head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS
    formats = DECODED_FORMATS + ("HEIF",) if heif and heif_opener() else DECODED_FORMATS
    try:
        image = Image.open(stream, formats=formats)
    except UnidentifiedImageError:
        if heif and "HEIF" not in formats:
            raise ImageDecodeError(HEIF_MISSING) from None
        found = next((name for at, magic, name in OTHER_FORMATS if head.startswith(magic, at)), None)
        if found:
            raise ImageDecodeError(f"not an image batchclf reads: the content is {found}") from None
        raise
    image.decodermaxblock = max(image.decodermaxblock, size)
    return image


_heif_lock = threading.Lock()
_heif_registered: bool | None = None  # None: no HEIF file met yet in this process


def heif_opener() -> bool:
    """Register pillow-heif's Pillow opener, once, when the first HEIF file is met; False without the extra.

    Registered lazily so that a run without HEIF files never imports libheif.
    """
    global _heif_registered
    with _heif_lock:
        if _heif_registered is None:
            try:
                from pillow_heif import register_heif_opener
            except ImportError:
                _heif_registered = False
            else:
                register_heif_opener()
                _heif_registered = True
    return _heif_registered


def check_pixel_limit(image: Image.Image) -> None:
    """Refuse an image above Pillow's pixel limit before it is decoded.

    Checked here rather than through Pillow's warning filter, which is not thread-safe.
    """
    width, height = image.size
    if width * height > (Image.MAX_IMAGE_PIXELS or math.inf):
        raise ImageDecodeError(
            f"decompression bomb refused: {width}x{height} pixels is more than "
            f"{Image.MAX_IMAGE_PIXELS} (Pillow's limit)"
        )


def decode_image(
    path: str, preprocessing: Preprocessing, content_hash: bool = False, read=None, exif: str | None = None
) -> DecodedImage:
    """Read, decode, orient, crop and resize one image; raise ``ImageDecodeError`` with a reason.

    ``read`` fetches the bytes (``read_file`` for a local path; object storage passes its own).
    ``exif`` (``config.EXIF_MODES``) also reads the EXIF columns from the image opened for decoding.
    """
    size = preprocessing.image_size
    content = None
    try:
        content = (read or read_file)(path)
        with open_image(content.data) as image:
            width, height = image.size
            check_pixel_limit(image)
            tags = image_exif(image)
            orientation = exif_orientation(tags)
            fields = read_exif(tags, exif) if exif else None
            # Draft reduces by powers of two while keeping at least the requested size.
            needed = math.ceil(size / preprocessing.crop_fraction)
            if os.environ.get("BATCHCLF_FULL_DECODE") != "1":
                image.draft("RGB", (needed, needed))
            image.seek(0)
            image.load()
            pixels = model_input(image, preprocessing, orientation)
    except ImageDecodeError as error:
        if content is None:
            raise
        raise ImageDecodeError(str(error), *content.signature) from None
    except StorageError:
        raise  # the storage failed, not the image: the shard fails and is tried again, never an error row
    except Exception as error:
        raise _reason(error, path, content) from None
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    digest = content_digest((content.data,)) if content_hash else None
    return DecodedImage(
        pixels, width, height, content.size, content.mtime, digest, content.inode, content.ctime, fields
    )


def model_input(image: Image.Image, preprocessing: Preprocessing, orientation: int = 1) -> np.ndarray:
    """A decoded image as the model sees it: upright, RGB, a centred square crop resized to the input size.

    The one copy of the preprocessing after decoding: ``decode_image`` and ``batchclf.Classifier``
    (for a PIL image or an array already in memory) both end here.
    """
    image = to_rgb(upright(image, orientation))
    size = preprocessing.image_size
    w, h = image.size
    crop = min(w, h) * preprocessing.crop_fraction
    box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
    resample = Image.Resampling[preprocessing.interpolation.upper()]
    resized = image.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)
    return np.asarray(resized, dtype=np.uint8)


def _reason(error: Exception, path: str, content: FileContent | None) -> ImageDecodeError:
    """The ``error`` column's text for an exception raised while reading or decoding."""
    message = error_message(error, content)
    if content is not None:
        return ImageDecodeError(message, *content.signature)
    try:  # the file could not be read: still record what it is, when it can be stat'ed
        status = os.stat(path)
        return ImageDecodeError(message, status.st_size, status.st_mtime_ns // 1000, *change_marks(status))
    except OSError:
        return ImageDecodeError(message)


def error_message(error: Exception, content: FileContent | None = None) -> str:
    """What went wrong, in the words of the ``error`` column (a report's placeholders say the same)."""
    if isinstance(error, FileNotFoundError):
        return "file not found (deleted during the run, or a broken symlink)"
    if isinstance(error, PermissionError):
        return "permission denied; make the file readable"
    if isinstance(error, NotRegularFileError):
        return str(error)
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


def image_exif(image: Image.Image) -> Image.Exif | None:
    """The image's EXIF, read once for the orientation and the EXIF columns; None when it cannot be read."""
    try:
        return image.getexif()
    except Exception:  # a damaged EXIF block is no reason to refuse the image
        return None


def exif_orientation(exif: Image.Exif | None) -> int:
    """The EXIF orientation (1-8); a damaged EXIF block means upright rather than an error."""
    try:
        value = exif.get(ORIENTATION_TAG, 1) if exif is not None else 1
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    method = ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


ImageFile.LOAD_TRUNCATED_IMAGES = False
