"""Small JPEG thumbnails as data URIs, made in parallel from the image files a run recorded.

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

from PIL import Image, ImageOps

from ..decode import to_rgb

THUMBNAIL_SIZE = 112  # longest side, in pixels
JPEG_QUALITY = 70


@dataclass(frozen=True)
class Thumbnail:
    uri: str | None  # data:image/jpeg;base64,... or None
    problem: str | None = None  # "missing" or "unreadable" when there is no image to show


def make_thumbnail(path: str, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """One thumbnail; any failure becomes a placeholder, because a report must not stop for one bad file."""
    if not os.path.isfile(path):
        return Thumbnail(None, "missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.draft("RGB", (size, size))
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)  # the same conversion the model's input gets
                image.thumbnail((size, size), Image.Resampling.BILINEAR)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except Exception:  # noqa: BLE001 - corrupt, truncated, bomb, unreadable: all shown the same way
        return Thumbnail(None, "unreadable")
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def make_thumbnails(root: Path, paths: Iterable[str], threads: int | None = None) -> dict[str, Thumbnail]:
    """``relative path → Thumbnail`` for each distinct path, made ``threads`` at a time."""
    unique = list(dict.fromkeys(paths))
    threads = threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="thumbnail") as pool:
        made = pool.map(lambda relative: make_thumbnail(os.path.join(root, relative)), unique)
        return dict(zip(unique, made))
