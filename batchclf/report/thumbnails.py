"""Small JPEG thumbnails as data URIs, made in parallel from the image files a run recorded.

The ``path`` column is data from a file anyone may have written, so a thumbnail is read only from
inside the input root: the path is resolved (symlinks included) and a file outside is never opened.
When the root is a URL (a run over a bucket), the image is read through ``store.read_object``, and
a path with an empty, ``.`` or ``..`` segment is refused, so no object outside the prefix is read.
The embedded JPEG carries pixels only; EXIF, comments, XMP and ICC data of the source are dropped.

Pillow releases the GIL while it decodes, so a thread pool keeps every core busy. ``draft`` lets the
JPEG decoder skip most of the work for large photos (it decodes at 1/2, 1/4 or 1/8 scale).
"""

from __future__ import annotations

import base64
import io
import os
import stat
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from ..decode import to_rgb
from ..discover import fs_path
from ..store import StorageOptions, is_url, read_object

THUMBNAIL_SIZE = 112  # longest side, in pixels
JPEG_QUALITY = 70
MISSING = "missing"
UNREADABLE = "unreadable"
OUTSIDE = "outside the input root"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Thumbnail:
    uri: str | None  # data:image/jpeg;base64,... or None
    problem: str | None = None  # MISSING, UNREADABLE or OUTSIDE when there is no image to show


def _inside(root: str, real: str) -> bool:
    return os.path.commonpath([root, real]) == root


def open_inside(root: str, name: str) -> BinaryIO | str:
    """Open the regular file ``name`` under ``root`` (a real path) for reading, or say why not.

    The name is resolved first and refused when it leads outside ``root`` (``..``, an absolute
    path, a symlink), so no byte of an outside file is read. ``O_NOFOLLOW`` and a look at what was
    actually opened (``/proc/self/fd``) close the gap in which a folder could be swapped for a link.
    """
    try:
        real = os.path.realpath(os.path.join(root, name))
        if not _inside(root, real):
            return OUTSIDE
        handle = os.open(real, _OPEN_FLAGS)
    except FileNotFoundError:
        return MISSING
    except (OSError, ValueError):  # permission denied, a link swapped in, an embedded NUL byte
        return UNREADABLE
    try:
        opened = os.readlink(f"/proc/self/fd/{handle}")
    except OSError:
        opened = real  # no /proc: the resolved path is what was opened
    mode = os.fstat(handle).st_mode
    problem = None
    if not _inside(root, opened):
        problem = OUTSIDE
    elif not stat.S_ISREG(mode):  # a folder, a FIFO, a device: never read
        problem = MISSING if stat.S_ISDIR(mode) else UNREADABLE
    if problem:
        os.close(handle)
        return problem
    return os.fdopen(handle, "rb")


def _pixels_only(image: Image.Image) -> Image.Image:
    """A copy with the pixels and nothing else: Pillow would otherwise copy the source's comment."""
    return Image.frombytes("RGB", image.size, image.tobytes())


def thumbnail_from(stream: BinaryIO, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """A thumbnail of an open image file; a file that cannot be decoded is a placeholder, not an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(stream) as image:
                image.draft("RGB", (size, size))
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)  # the same conversion the model's input gets
                image.thumbnail((size, size), Image.Resampling.BILINEAR)
                buffer = io.BytesIO()
                _pixels_only(image).save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except Exception:  # noqa: BLE001 - corrupt, truncated, bomb, unreadable: all shown the same way
        return Thumbnail(None, UNREADABLE)
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def make_thumbnail(path: str, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """The thumbnail of the file at ``path``, confined to the folder it is in."""
    folder, name = os.path.split(os.path.abspath(path))
    return thumbnail_inside(os.path.realpath(folder), name, size)


def thumbnail_inside(root: str, name: str, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """The thumbnail of ``name`` under the real folder ``root``, or why there is none."""
    opened = open_inside(root, name)
    if isinstance(opened, str):
        return Thumbnail(None, opened)
    with opened:
        return thumbnail_from(opened, size)


def thumbnail_of_object(root: str, name: str, options: StorageOptions | None, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """The thumbnail of the object ``name`` under the URL prefix ``root``, or why there is none."""
    if any(part in ("", ".", "..") for part in name.split("/")):
        return Thumbnail(None, OUTSIDE)
    try:
        content = read_object(root.rstrip("/") + "/" + name, options)
    except FileNotFoundError:
        return Thumbnail(None, MISSING)
    except Exception:  # noqa: BLE001 - denied, unreachable, kept changing: all shown the same way
        return Thumbnail(None, UNREADABLE)
    return thumbnail_from(io.BytesIO(content.data), size)


def make_thumbnails(
    root: Path | str, paths: Iterable[str], threads: int | None = None, storage_options: StorageOptions | None = None
) -> dict[str, Thumbnail]:
    """``path text → Thumbnail`` for each distinct ``path`` of the output, made ``threads`` at a time.

    ``root`` is a folder, or a URL prefix read with ``storage_options``.
    """
    unique = list(dict.fromkeys(paths))
    if is_url(str(root)):
        threads = threads or 16  # object reads wait on the network

        def make(text: str) -> Thumbnail:
            return thumbnail_of_object(str(root), fs_path(text), storage_options)
    else:
        real_root = os.path.realpath(root)
        threads = threads or min(16, 2 * (os.cpu_count() or 1))

        def make(text: str) -> Thumbnail:
            return thumbnail_inside(real_root, fs_path(text))

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="thumbnail") as pool:
        return dict(zip(unique, pool.map(make, unique)))
