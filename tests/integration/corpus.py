"""Build a folder of odd files, and say for each image file what a run must report about it.

The expectations are written here, from what was made, so that a test can check a run without
relying on ``discover`` to decide which files exist.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112
DEEP_LEVELS = 60


@dataclass(frozen=True)
class Expected:
    status: str  # "ok" or "error"
    error: str | None = None  # a phrase the error text must contain (lower case)
    size: tuple[int, int] | None = None  # upright (width, height) of an ok row


def pattern(width: int, height: int) -> np.ndarray:
    """An asymmetric picture (quadrants of different colours, a gradient) so rotations are visible."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.where(x < width // 2, 220, 30)
    pixels[..., 1] = np.where(y < height // 3, 200, 40)
    pixels[..., 2] = (x * 255 // max(1, width - 1)).astype(np.uint8)
    return pixels


def jpeg_bytes(width: int = 96, height: int = 64, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pattern(width, height)).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def write_exif_rotated(path: Path, width: int = 80, height: int = 48, orientation: int = 6) -> np.ndarray:
    """A JPEG stored ``width``x``height`` whose EXIF says to turn it; return the stored pixels as decoded."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(pattern(width, height)).save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb16_bytes(width: int = 40, height: int = 30) -> bytes:
    """A 48-bit RGB PNG, written by hand because Pillow cannot save one."""
    pixels = pattern(width, height).astype(np.uint16) * 257
    raw = b"".join(b"\0" + pixels[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def png_bomb_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header announcing ``width``x``height`` pixels, with almost no data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _save(path: Path, image: Image.Image, format: str | None = None, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format, **options)


def build_corpus(root: Path, reader_bypasses_permissions: bool | None = None) -> dict[str, Expected]:
    """Write the odd-file tree under ``root``; return relative path → expectation for every image file.

    ``reader_bypasses_permissions``: whether the process that will read the corpus ignores file
    modes (root with its usual capabilities); None: whether this process does.
    """
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Expected] = {}
    base = Image.fromarray(pattern(96, 64))

    def ok(relative: str, size: tuple[int, int] = (96, 64)) -> Path:
        expected[relative] = Expected("ok", size=size)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def error(relative: str, phrase: str) -> Path:
        expected[relative] = Expected("error", error=phrase)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # Formats and modes that decode, once converted to upright 8-bit RGB.
    write_exif_rotated(ok("formats/exif_rotated.jpg", size=(48, 80)))
    _save(ok("formats/cmyk.jpg"), base.convert("CMYK"), "JPEG")
    gray16 = pattern(96, 64)[..., 0].astype(np.uint16) * 257
    _save(ok("formats/gray16.png"), Image.fromarray(gray16), "PNG")  # mode I;16
    ok("formats/rgb16.png", size=(40, 30)).write_bytes(png_rgb16_bytes())
    palette = base.quantize(colors=16)
    _save(ok("formats/palette_transparent.png"), palette, "PNG", transparency=0)
    _save(ok("formats/gray_alpha.png"), base.convert("LA"), "PNG")
    frames = [Image.new("RGB", (96, 64), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    _save(ok("formats/animated.gif"), frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("formats/progressive.jpg").write_bytes(jpeg_bytes(progressive=True, optimize=True))
    _save(ok("formats/image.tiff"), base, "TIFF", compression="tiff_lzw")
    _save(ok("formats/image.tif"), base, "TIFF")
    _save(ok("formats/image.webp"), base, "WEBP", quality=80)
    _save(ok("formats/image.bmp"), base, "BMP")
    ok("formats/jpeg_named.png").write_bytes(jpeg_bytes())  # content decides, not the extension

    # Files that must become error rows with a reason.
    error("broken/bomb.png", "decompression bomb").write_bytes(png_bomb_bytes())
    whole = jpeg_bytes(320, 240)
    error("broken/truncated.jpg", "truncated file").write_bytes(whole[: len(whole) // 2])
    error("broken/empty.jpg", "empty file").write_bytes(b"")
    error("broken/notes.jpg", "not a recognised image").write_text("these are notes, not a picture\n")
    os.mkfifo(error("broken/fifo.jpg", "not a regular file"))
    os.symlink("does-not-exist.jpg", error("broken/dangling_link.jpg", "broken symlink"))
    os.symlink("self_link.jpg", error("broken/self_link.jpg", "symlink loop"))

    # Permissions: root reads anything, so what a run must say depends on who runs it.
    unreadable = root / "permissions" / "unreadable.jpg"
    unreadable.parent.mkdir(parents=True)
    unreadable.write_bytes(jpeg_bytes())
    unreadable.chmod(0)
    locked = root / "permissions" / "locked_folder"
    locked.mkdir()
    (locked / "inside.jpg").write_bytes(jpeg_bytes())
    locked.chmod(0)
    if reader_bypasses_permissions is None:
        reader_bypasses_permissions = os.access(unreadable, os.R_OK)
    if reader_bypasses_permissions:
        expected["permissions/unreadable.jpg"] = Expected("ok", size=(96, 64))
        expected["permissions/locked_folder/inside.jpg"] = Expected("ok", size=(96, 64))
    else:  # an unreadable file is an error row; an unreadable folder cannot be listed, so has no rows
        expected["permissions/unreadable.jpg"] = Expected("error", error="permission denied")

    # Names.
    for name in (
        "names/with space.jpg",
        "names/ñandú 日本語.jpg",
        "names/new\nline.jpg",
        "names/UPPER.JPG",
        "names/Mixed.Png",
        "names/semi;colon,comma'quote\".jpeg",
    ):
        ok(name).write_bytes(jpeg_bytes())
    # A Latin-1 file name, not valid UTF-8: a row whose path shows the odd byte as \xe9.
    with open(os.path.join(os.fsencode(root / "names"), b"caf\xe9 latin-1.jpg"), "wb") as stream:
        stream.write(jpeg_bytes())
    expected["names/caf\\xe9 latin-1.jpg"] = Expected("ok", size=(96, 64))
    deep = "/".join(f"d{level:02d}" for level in range(DEEP_LEVELS))
    ok(f"nested/{deep}/deep.jpg").write_bytes(jpeg_bytes())

    # Folders and links that must not add rows, nor loop, nor be counted twice.
    (root / "folders" / "empty").mkdir(parents=True)
    ok("folders/album.jpg/inside.jpg").write_bytes(jpeg_bytes())  # a folder with an image's name
    os.symlink("..", root / "folders" / "loop_to_root")  # folder links back up the tree
    os.symlink("../../..", root / "nested" / "d00" / "d01" / "loop_to_nested")
    os.symlink("../..", root / "folders" / "link_above_root")  # would walk everything beside the corpus
    os.symlink("empty", root / "folders" / "link_to_empty")
    (root / "folders" / "readme.txt").write_text("not an image\n")
    (root / "folders" / "archive.jpg.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (root / ".hidden.jpg").write_bytes(jpeg_bytes())  # hidden files are skipped by default
    return expected


def restore_permissions(root: Path) -> None:
    """Make the corpus removable again (pytest's tmp_path clean-up walks it)."""
    for relative in ("permissions/locked_folder", "permissions/unreadable.jpg"):
        path = root / relative
        if path.exists():
            path.chmod(stat.S_IRWXU)
