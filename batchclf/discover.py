"""Find the images to classify: a recursive, deterministic walk, or a list file."""

from __future__ import annotations

import fnmatch
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .errors import UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)


def is_image_name(name: str) -> bool:
    """An image extension, in any case, after a name (``.jpg`` alone is a hidden file's name)."""
    lower = name.lower()
    return lower.endswith(_IMAGE_SUFFIXES) and lower not in IMAGE_EXTENSIONS


def path_text(relative: str) -> str:
    """``relative`` as the output's ``path`` text: valid Unicode, one text per file name.

    A file name that is not UTF-8 reaches Python with its odd bytes as lone surrogates, which
    Arrow refuses; they are written as ``\\xNN``. A backslash in a name is written ``\\\\``, so no
    two names share a text (``x_\\xff.jpg`` spelled out and ``x_`` + byte 0xff stay apart) and
    ``fs_path`` turns the text back into the name. Sorting these texts is the one order of the output.
    """
    escaped = relative.replace("\\", "\\\\")
    return escaped.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")  # path_text escapes only the bytes 0x80-0xff


def fs_path(text: str) -> str:
    """The file name ``path_text`` wrote as ``text`` (odd bytes back as surrogates, for ``open``)."""
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """A pattern matches the relative path, or the file name when the pattern has no ``/``."""
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative if "/" in p else name, p) for p in patterns)


LISTING_BATCH_ROWS = 16384
LISTING_SCHEMA = pa.schema(
    [("path", pa.string()), ("bytes", pa.int64()), ("mtime", pa.int64()), ("readable", pa.bool_())]
)


@dataclass
class Listing:
    """The images under the input, streamed in output order as Arrow batches of path, bytes and mtime (µs).

    Nothing holds the whole list: at ten million files a Python list of names alone would take
    about a gigabyte. ``unreadable`` (folder text ending in ``/``, reason) and ``files`` are complete
    once ``batches`` is exhausted.
    """

    root: Path | str  # a URL for object storage
    batches: Iterator[pa.Table]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0


def _signature(entry_or_path) -> tuple[int | None, int | None, bool]:
    """Size, mtime (µs) and whether this process may read the file: a file that became unreadable
    has changed for a nightly run even though its size and mtime did not."""
    path = entry_or_path.path if isinstance(entry_or_path, os.DirEntry) else entry_or_path
    try:
        stat = entry_or_path.stat() if isinstance(entry_or_path, os.DirEntry) else os.stat(path)
    except OSError:  # a broken link: still a row, whose error says so
        return None, None, False
    return stat.st_size, stat.st_mtime_ns // 1000, os.access(path, os.R_OK)


def _walk(root: Path, include_hidden: bool, unreadable: list, with_stat: bool) -> Iterator[tuple]:
    """Yield (relative name, size, mtime) in output order, following symlinks without looping.

    Directories are identified by (device, inode) so a symlink loop, or two links to one folder,
    is entered once; the folders above ``root`` count as visited, so a link to one of them (a loop
    that would otherwise walk the whole disk) is not followed. Broken links are reported as files so
    that they become error rows rather than vanish. A folder that cannot be listed is recorded in
    ``unreadable`` (never silently skipped: a nightly run must not take its files for deleted).

    Entries are sorted by their path text, folders as ``name/``: a depth-first walk in that order
    yields exactly the sorted order of the full path texts, so no global sort is needed.
    """
    visited: set[tuple[int, int]] = set()
    for ancestor in Path(os.path.realpath(root)).parents:
        try:
            stat = os.stat(ancestor)
        except OSError:
            continue
        visited.add((stat.st_dev, stat.st_ino))

    def listing(directory: str, prefix: str) -> list[tuple[str, os.DirEntry, bool]]:
        try:
            stat = os.stat(directory)
            key = (stat.st_dev, stat.st_ino)
            if key in visited:
                return []
            visited.add(key)
            with os.scandir(directory) as scan:
                entries = list(scan) if include_hidden else [e for e in scan if e.name[0] != "."]
        except OSError as error:
            if not prefix:
                reason = error.strerror or str(error)
                raise UsageError(f"cannot read the input folder {root}: {reason}; check its permissions") from None
            unreadable.append((path_text(prefix), error.strerror or str(error)))
            return []
        keyed = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir or is_image_name(entry.name):
                keyed.append((path_text(entry.name) + ("/" if is_dir else ""), entry, is_dir))
        # The sort key is the entry's path text: joined to its folder's, it is the file's path text.
        keyed.sort(key=lambda item: item[0])
        return keyed

    access, R_OK = os.access, os.R_OK
    # An explicit stack of open listings rather than recursion: a deep tree must not hit Python's
    # recursion limit, and a folder is entered where it sorts, between the files around it.
    stack = [("", "", iter(listing(os.fspath(root), "")))]
    while stack:
        prefix, prefix_text, entries = stack[-1]
        item = next(entries, None)
        if item is None:
            stack.pop()
            continue
        text, entry, is_dir = item
        relative = prefix + entry.name
        if is_dir:
            stack.append((relative + "/", prefix_text + text, iter(listing(entry.path, relative + "/"))))
        elif with_stat:
            try:
                stat = entry.stat()
                yield relative, prefix_text + text, stat.st_size, stat.st_mtime_ns // 1000, access(entry.path, R_OK)
            except OSError:  # a broken link: still a row, whose error says so
                yield relative, prefix_text + text, None, None, False
        else:
            yield relative, prefix_text + text, None, None, None


def walk_images(root: Path, include_hidden: bool = False) -> Iterator[str]:
    """Image paths relative to ``root`` (``/``-separated), in output order."""
    for relative, *_ in _walk(root, include_hidden, [], with_stat=False):
        yield relative


def read_path_list(list_file: Path) -> tuple[Path, list[str]]:
    """Read a text file of image paths, one a line (``#`` comments and blank lines ignored).

    Lines are path texts as the output writes them (so a ``path`` column can be fed back, odd bytes
    as ``\\xNN``), relative to the list file's folder or absolute. The input root, against which the
    output's ``path`` column is written, is the deepest folder holding every listed file. A file that
    is not UTF-8 text of image paths is refused: it is more likely the wrong file than a list.
    """
    base = list_file.resolve().parent
    absolute = []
    try:
        with open(list_file, encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if not is_image_name(line):
                    shown = line if len(line) <= 60 else line[:57] + "..."
                    raise UsageError(
                        f"{list_file} line {number} is not an image path ({shown!r}); give a folder, or a text "
                        "file with one image path a line"
                    )
                absolute.append(os.path.normpath(os.path.join(base, fs_path(line))))
    except UnicodeDecodeError:
        raise UsageError(
            f"{list_file} is not UTF-8 text; give a folder, or a UTF-8 text file with one image path a line"
        ) from None
    except OSError as error:
        raise UsageError(f"cannot read {list_file}: {error.strerror}") from None
    if not absolute:
        return base, []
    root = os.path.commonpath(absolute)
    if len(set(absolute)) == 1 or os.path.isfile(root):
        root = os.path.dirname(root)
    relative = {os.path.relpath(p, root).replace(os.sep, "/") for p in absolute}
    return Path(root), sorted(relative, key=path_text)


def _filtered(names: Iterator[tuple], include: Sequence[str], exclude: Sequence[str]) -> Iterator[tuple]:
    if not include and not exclude:
        yield from names
        return
    for item in names:
        if include and not _matches(item[0], include):
            continue
        if exclude and _matches(item[0], exclude):
            continue
        yield item


def list_images(
    source: Path | str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    batch_rows: int = LISTING_BATCH_ROWS,
    storage_options=None,
) -> Listing:
    """Stream the images under ``source`` (a folder to walk, a text file listing image paths, or a URL prefix)."""
    from . import storage

    if storage.is_url(source):
        return _list_objects(source, include, exclude, include_hidden, batch_rows, storage_options)
    if source.is_dir():
        listing = Listing(root=source.resolve(), batches=iter(()))
        names = _walk(source, include_hidden, listing.unreadable, with_stat=True)
    elif source.is_file():
        root, relative = read_path_list(source)
        listing = Listing(root=root, batches=iter(()))
        names = ((name, path_text(name), *_signature(os.path.join(root, name))) for name in relative)
    else:
        raise UsageError(f"input {source} does not exist; give a folder of images or a file listing them")
    listing.batches = _batches(_filtered(names, include, exclude), listing, batch_rows)
    return listing


def _list_objects(url: str, include, exclude, include_hidden: bool, batch_rows: int, options) -> Listing:
    """The images under a URL prefix: the same extensions, filters and hidden rule as a folder walk."""
    from . import storage

    root = url.rstrip("/")
    listing = Listing(root=root, batches=iter(()))
    names = (
        (name, path_text(name), size, mtime)
        for name, size, mtime in storage.list_objects(root, options)
        if is_image_name(name.rsplit("/", 1)[-1]) and (include_hidden or not any(p[:1] == "." for p in name.split("/")))
    )
    table = storage.sorted_listing([item[1:] for item in _filtered(names, include, exclude)], LISTING_SCHEMA)
    listing.batches = (pa.Table.from_batches([batch]) for batch in table.to_batches(batch_rows))

    def counted(batches):
        for batch in batches:
            listing.files += batch.num_rows
            yield batch

    listing.batches = counted(listing.batches)
    return listing


def _batches(names: Iterator[tuple], listing: Listing, batch_rows: int) -> Iterator[pa.Table]:
    while True:
        chunk = list(itertools.islice(names, batch_rows))
        if not chunk:
            return
        listing.files += len(chunk)
        _, texts, sizes, mtimes, readable = zip(*chunk)
        yield pa.table(
            [
                pa.array(texts, pa.string()),
                pa.array(sizes, pa.int64()),
                pa.array(mtimes, pa.int64()),
                pa.array(readable, pa.bool_()),
            ],
            schema=LISTING_SCHEMA,
        )


def discover_images(
    source: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> tuple[Path, list[str]]:
    """The input root and the relative names of its images, in output order, as one list.

    For small inputs (training sets, tests); a run streams ``list_images`` instead.
    """
    if source.is_dir():
        names = ((name,) for name in walk_images(source, include_hidden))
        root = source.resolve()
    elif source.is_file():
        root, relative = read_path_list(source)
        names = ((name,) for name in relative)
    else:
        raise UsageError(f"input {source} does not exist; give a folder of images or a file listing them")
    return root, [item[0] for item in _filtered(names, include, exclude)]
