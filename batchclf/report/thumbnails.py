"""Small JPEG thumbnails as data URIs, made in parallel from the image files a run recorded.

The ``path`` column is data from a file anyone may have written, so a thumbnail is read only from
inside the input root, through ``Location.open_inside``: in a folder the path is resolved (symlinks
included) and a file outside is never opened; under a URL prefix (a run over a bucket) a path with an
empty, ``.`` or ``..`` segment is refused, so no object outside the prefix is read.
The file is opened by ``decode.open_image``, as for the model: only the decoders of the formats batchclf
walks, so a PostScript file named ``.jpg`` is a placeholder saying so, never a Ghostscript process.
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

from PIL import Image

from ..decode import ImageDecodeError, check_pixel_limit, error_message, exif_orientation, open_image, to_rgb, upright
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
    reason: str | None = None  # why a file is UNREADABLE, in the words of the run's ``error`` column


def _pixels_only(image: Image.Image) -> Image.Image:
    """A copy with the pixels and nothing else: Pillow would otherwise copy the source's comment."""
    return Image.frombytes("RGB", image.size, image.tobytes())


def thumbnail_from(stream: BinaryIO, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """A thumbnail of an open image file; a file that cannot be decoded is a placeholder with its reason."""
    try:
        with open_image(stream) as image:
            check_pixel_limit(image)
            image.draft("RGB", (size, size))
            image.load()
            image = upright(image, exif_orientation(image))  # after loading: a PNG's EXIF may follow its pixels
            image = to_rgb(image)  # the same conversion the model's input gets
            image.thumbnail((size, size), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            _pixels_only(image).save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except ImageDecodeError as error:
        return Thumbnail(None, UNREADABLE, str(error))
    except Exception as error:  # noqa: BLE001 - corrupt, truncated, out of memory: a placeholder, never a stop
        return Thumbnail(None, UNREADABLE, error_message(error))
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

    # Pillow's warnings (a large image, odd EXIF) change nothing on the page. The filter is set once,
    # here, because ``catch_warnings`` in each thread would race on the process-wide filter list.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="thumbnail") as pool:
            return dict(zip(unique, pool.map(make, unique)))
