"""Small JPEG thumbnails as data URIs, made in parallel from the image files a run recorded.

The ``path`` column is data from a file anyone may have written, so a thumbnail is read only from
inside the input root, through ``Location.open_inside``: in a folder the path is resolved (symlinks
included) and a file outside is never opened; under a URL prefix (a run over a bucket) a path with an
empty, ``.`` or ``..`` segment is refused, so no object outside the prefix is read.
The file is opened by ``decode.open_image``, as for the model: only the decoders of the formats batchclf
walks, so a PostScript file named ``.jpg`` is a placeholder saying so, never a Ghostscript process.
The embedded JPEG carries pixels only; EXIF, comments, XMP and ICC data of the source are dropped.

Pillow releases the GIL while it decodes, so a thread pool keeps every core busy. ``draft`` lets the
JPEG decoder skip most of the work for large photos (it decodes at 1/2, 1/4 or 1/8 scale); other
formats decode at full size, so a small file can hold gigabytes once decoded (a 9400×9400 16-bit PNG of
zeros is 172 kB). Each decode is therefore admitted by a ``MemoryBudget``: its peak is estimated from
the header before a pixel is decoded, and decodes run together only while their sum fits.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import ctypes
import ctypes.util
import io
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..decode import (
    ImageDecodeError,
    check_pixel_limit,
    error_message,
    exif_orientation,
    image_exif,
    open_image,
    to_rgb,
    upright,
)
from ..paths import fs_path
from ..store import Location, OutsideRootError, StorageOptions, location

THUMBNAIL_SIZE = 112  # longest side, in pixels
JPEG_QUALITY = 70
MISSING = "missing"
UNREADABLE = "unreadable"
OUTSIDE = "outside the input root"
UNAVAILABLE = "unavailable"  # the input root is a URL only the output file names: never fetched

THUMBNAIL_MEMORY_BYTES = 512 << 20  # decodes in flight at once, at most (less when memory is short)
# Bytes per decoded pixel at the peak of making one thumbnail, by the mode Pillow decodes to (measured;
# tests/test_hostile_report.py checks each against the real peak): the decoded image plus the copies
# made before it is shrunk. 8-bit modes are shrunk first; a palette becomes RGBA first; 1-bit and wide
# modes (16-bit, 32-bit, float) go through ``to_rgb`` at full size.
PEAK_BYTES_PER_PIXEL = {
    "1": 6,
    "L": 2,
    "P": 10,
    "LA": 9,
    "RGB": 5,
    "RGBA": 9,
    "I;16": 8,
    "I;16L": 8,
    "I;16B": 8,
    "I": 14,
    "F": 14,
    "CMYK": 9,
}
OTHER_PEAK_BYTES_PER_PIXEL = 18  # any other mode (YCbCr, LAB, PA ...): converted at full size
# Modes ``to_rgb`` maps pixel by pixel and linearly (compositing on white commutes with Pillow's
# premultiplied resampling), so shrinking them first gives the same thumbnail from far less memory.
SHRINK_FIRST_MODES = ("L", "LA", "RGB", "RGBA")
LARGE_DECODE_BYTES = 32 << 20  # above this, what a decode freed is handed back to the system at once


@dataclass(frozen=True)
class Thumbnail:
    uri: str | None  # data:image/jpeg;base64,... or None
    problem: str | None = None  # MISSING, UNREADABLE, OUTSIDE or UNAVAILABLE when there is no image to show
    reason: str | None = None  # why a file is UNREADABLE, in the words of the run's ``error`` column


class MemoryBudget:
    """Admits work while the bytes it is estimated to hold, all together, stay within ``limit``.

    Admission is in arrival order, so a large item is not overtaken for ever by small ones; an item
    larger than the whole budget waits until nothing else is in flight and then runs alone.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self.largest_in_flight = 0  # the most ever admitted at once (for tests and timings)
        self._queue: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        """Items queued for admission."""
        with self._changed:
            return len(self._queue)

    def _admits(self, ticket: object, cost: int) -> bool:
        return self._queue[0] is ticket and (self.in_flight == 0 or self.in_flight + cost <= self.limit)

    @contextlib.contextmanager
    def admit(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget for the block, waiting until they fit."""
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._admits(ticket, cost))
            self._queue.popleft()
            self.in_flight += cost
            self.largest_in_flight = max(self.largest_in_flight, self.in_flight)
            self._changed.notify_all()  # the next in line may fit beside this one
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= cost
                self._changed.notify_all()


def thumbnail_memory() -> int:
    """The default budget: ``THUMBNAIL_MEMORY_BYTES``, or a quarter of the memory available now if less."""
    import psutil

    return max(1, min(THUMBNAIL_MEMORY_BYTES, psutil.virtual_memory().available // 4))


def peak_bytes(image: Image.Image) -> int:
    """What making a thumbnail of an opened (not yet loaded) image holds at its peak, from its header:
    pixels as they will be decoded (after ``draft``) times the peak bytes per pixel of the mode."""
    width, height = image.size
    return width * height * PEAK_BYTES_PER_PIXEL.get(image.mode, OTHER_PEAK_BYTES_PER_PIXEL)


def _pixels_only(image: Image.Image) -> Image.Image:
    """A copy with the pixels and nothing else: Pillow would otherwise copy the source's comment."""
    return Image.frombytes("RGB", image.size, image.tobytes())


def _shrunk_rgb(decoded: Image.Image, size: int) -> Image.Image:
    """A new 8-bit RGB image within ``size``×``size``, converted as the model's input is (``decoded``
    may be shrunk in place and can be closed afterwards)."""
    image = decoded.convert("RGBA") if decoded.mode == "P" else decoded  # a palette's colours, not its indices
    if image.mode in SHRINK_FIRST_MODES:
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
    image = to_rgb(image)
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return image.copy() if image is decoded else image


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _return_freed_memory() -> None:
    """Give the memory a large decode freed back to the system.

    glibc keeps freed memory in each thread's own heap for that thread to reuse, so without this every
    thread of the pool would in time hold about one large decode's worth, whatever the budget admits.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def thumbnail_from(stream: BinaryIO, size: int = THUMBNAIL_SIZE, budget: MemoryBudget | None = None) -> Thumbnail:
    """A thumbnail of an open image file; a file that cannot be decoded is a placeholder with its reason.

    ``budget`` admits the decode once its peak is known from the header.
    """
    try:
        with open_image(stream) as image:
            check_pixel_limit(image)
            image.draft("RGB", (size, size))
            cost = peak_bytes(image)
            with budget.admit(cost) if budget else contextlib.nullcontext():
                try:
                    image.load()
                    # after loading: a PNG's EXIF may follow its pixels
                    orientation = exif_orientation(image_exif(image))
                    small = upright(_shrunk_rgb(image, size), orientation)
                finally:
                    image.close()  # the decoded pixels are released before the next decode is admitted
                    if cost >= LARGE_DECODE_BYTES:
                        _return_freed_memory()
            buffer = io.BytesIO()
            _pixels_only(small).save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except ImageDecodeError as error:
        return Thumbnail(None, UNREADABLE, str(error))
    except Exception as error:  # noqa: BLE001 - corrupt, truncated, out of memory: a placeholder, never a stop
        return Thumbnail(None, UNREADABLE, error_message(error))
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def make_thumbnail(path: str, size: int = THUMBNAIL_SIZE) -> Thumbnail:
    """The thumbnail of the file at ``path``, confined to the folder it is in."""
    folder, name = os.path.split(os.path.abspath(path))
    return thumbnail_inside(os.path.realpath(folder), name, size)


def thumbnail_inside(
    root: Location | str, name: str, size: int = THUMBNAIL_SIZE, budget: MemoryBudget | None = None
) -> Thumbnail:
    """The thumbnail of ``name`` under ``root`` (a folder or a URL prefix), or why there is none."""
    try:
        with location(root).open_inside(name) as stream:
            return thumbnail_from(stream, size, budget)
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
    memory: int | None = None,
) -> dict[str, Thumbnail]:
    """``path text → Thumbnail`` for each distinct ``path`` of the output, made ``threads`` at a time
    and within ``memory`` bytes of decodes at once (default ``thumbnail_memory()``).

    ``root`` is a folder, or a URL prefix read with ``storage_options``; reads that wait on the network
    get more threads.
    """
    unique = list(dict.fromkeys(paths))
    root = location(root, storage_options)
    threads = threads or min(16, max(2 * (os.cpu_count() or 1), 2 * root.concurrent_reads))
    budget = MemoryBudget(memory or thumbnail_memory())

    def make(text: str) -> Thumbnail:
        return thumbnail_inside(root, fs_path(text), budget=budget)

    # Pillow's warnings (a large image, odd EXIF) change nothing on the page. The filter is set once,
    # here, because ``catch_warnings`` in each thread would race on the process-wide filter list.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="thumbnail") as pool:
            return dict(zip(unique, pool.map(make, unique)))
