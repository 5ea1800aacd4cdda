"""Small JPEG thumbnails as data URIs, made in parallel from the image files a run recorded.

The ``path`` column is data from a file anyone may have written, so a thumbnail is read only from
inside the input root, through ``Location.open_inside``: in a folder the path is resolved (symlinks
included) and a file outside is never opened; under a URL prefix (a run over a bucket) a path with an
empty, ``.`` or ``..`` segment is refused, so no object outside the prefix is read.
The embedded JPEG carries pixels only; EXIF, comments, XMP and ICC data of the source are dropped.

Pillow releases the GIL while it decodes, so a thread pool keeps every core busy. ``draft`` lets the
JPEG decoder skip most of the work for large photos (it decodes at 1/2, 1/4 or 1/8 scale).
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from ..decode import to_rgb
from ..paths import fs_path
from ..store import Location, OutsideRootError, StorageOptions, location

THUMBNAIL_SIZE = 112  # longest side, in pixels
JPEG_QUALITY = 70
MISSING = "missing"
UNREADABLE = "unreadable"
OUTSIDE = "outside the input root"
UNAVAILABLE = "unavailable"  # the input root is a URL only the output file names: never fetched


@dataclass(frozen=True)
class Thumbnail:
    uri: str | None  # data:image/jpeg;base64,... or None
    problem: str | None = None  # MISSING, UNREADABLE, OUTSIDE or UNAVAILABLE when there is no image to show


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


def thumbnail_inside(root: Location | str, name: str, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """The thumbnail of ``name`` under ``root`` (a folder or a URL prefix), or why there is none."""
    try:
        with location(root).open_inside(name) as stream:
            return thumbnail_from(stream, size)
    except OutsideRootError:
        return Thumbnail(None, OUTSIDE)
    except (FileNotFoundError, IsADirectoryError):
        return Thumbnail(None, MISSING)
    except Exception:  # noqa: BLE001 - denied, unreachable, not a regular file, kept changing: all shown the same way
        return Thumbnail(None, UNREADABLE)


def make_thumbnails(
    root: Location | Path | str,
    paths: Iterable[str],
    threads: int | None = None,
    storage_options: StorageOptions | None = None,
) -> dict[str, Thumbnail]:
    """``path text → Thumbnail`` for each distinct ``path`` of the output, made ``threads`` at a time.

    ``root`` is a folder, or a URL prefix read with ``storage_options``; reads that wait on the network
    get more threads.
    """
    unique = list(dict.fromkeys(paths))
    root = location(root, storage_options)
    threads = threads or min(16, max(2 * (os.cpu_count() or 1), 2 * root.concurrent_reads))

    def make(text: str) -> Thumbnail:
        return thumbnail_inside(root, fs_path(text))

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="thumbnail") as pool:
        return dict(zip(unique, pool.map(make, unique)))
