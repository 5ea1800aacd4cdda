"""Find the images to classify: a recursive, deterministic walk, or a list file."""

from __future__ import annotations

import fnmatch
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .errors import UsageError
from .folders import Files, Folder, ListingHelpers, list_folder
from .fsutil import change_marks
from .paths import IMAGE_EXTENSIONS, extension, fs_path, path_text


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """A pattern matches the relative path, or the file name when the pattern has no ``/``."""
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative if "/" in p else name, p) for p in patterns)


LISTING_BATCH_ROWS = 16384
LISTING_HELPERS_AFTER = 100_000  # files listed in this process before helper processes join the walk
LISTING_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("mtime", pa.int64()),
        ("readable", pa.bool_()),
        ("inode", pa.int64()),  # null in object storage
        ("ctime", pa.int64()),  # null there, and for a file with several links (fsutil.change_marks)
    ]
)


@dataclass
class Listing:
    """The images under the input, streamed in output order as Arrow batches of path, bytes and mtime (µs).

    Nothing holds the whole list: at ten million files a Python list of names alone would take
    about a gigabyte. ``unreadable`` (folder text ending in ``/``, reason), ``skipped`` and ``files``
    are complete once ``batches`` is exhausted.
    """

    root: Path | str  # a URL for object storage
    batches: Iterator[pa.Table]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # files left out for their extension, by extension


def add_counts(total: dict[str, int], counts: dict[str, int]) -> None:
    for key, count in counts.items():
        total[key] = total.get(key, 0) + count


def _signature(path: str) -> tuple:
    """Size, mtime (µs), whether this process may read the file (one that became unreadable has
    changed for a nightly run even though its size and mtime did not), inode and ctime."""
    try:
        stat = os.stat(path)
    except OSError:  # a broken link: still a row, whose error says so
        return None, None, False, None, None
    return stat.st_size, stat.st_mtime_ns // 1000, os.access(path, os.R_OK), *change_marks(stat)


def _walk(
    root: Path, include_hidden: bool, unreadable: list, with_stat: bool, with_names: bool, skipped: dict | None = None
) -> Iterator[Files]:
    """Yield the image files under ``root`` in output order, following symlinks without looping.

    Directories are identified by (device, inode) so a symlink loop, or two links to one folder,
    is entered once; the folders above ``root`` count as visited, so a link to one of them (a loop
    that would otherwise walk the whole disk) is not followed. Broken links are reported as files so
    that they become error rows rather than vanish. A folder that cannot be listed is recorded in
    ``unreadable`` (never silently skipped: a nightly run must not take its files for deleted). Files
    of other extensions are counted in ``skipped``, by extension, once a folder.

    Entries are sorted by their path text, folders as ``name/``: a depth-first walk in that order
    yields exactly the sorted order of the full path texts, so no global sort is needed. Each folder
    is opened once, listed and stat'ed, and closed before its sub-folders are entered, so a deep tree
    holds no descriptors and, walked with an explicit stack, never meets Python's recursion limit.

    Past ``LISTING_HELPERS_AFTER`` files, helper processes (one a core) list and stat the next
    sub-folders while this process hands on the ones before: the answers are taken in walk order, and
    whether a folder was seen before is decided here as it is entered, so the listing is the same.
    """
    visited: set[tuple[int, int]] = set()
    for ancestor in Path(os.path.realpath(root)).parents:
        try:
            stat = os.stat(ancestor)
        except OSError:
            continue
        visited.add((stat.st_dev, stat.st_ino))

    def listed(path: str, prefix: str, prefix_text: str) -> Folder | OSError:
        return list_folder(path, prefix, prefix_text, include_hidden, with_stat)

    def entered(result: Folder | OSError, prefix: str, prefix_text: str) -> Folder | None:
        """The folder to walk, or None: one already walked (a loop, a second link) or one unreadable."""
        if isinstance(result, OSError):
            reason = result.strerror or str(result)
            if not prefix:
                raise UsageError(f"cannot read the input folder {root}: {reason}; check its permissions") from None
            unreadable.append((prefix_text, reason))
            return None
        if result.key in visited:
            return None
        visited.add(result.key)
        if skipped is not None:
            add_counts(skipped, result.skipped)
        return result

    top = entered(listed(os.fspath(root), "", ""), "", "")
    stack = [top] if top else []
    helpers, listed_files = None, 0
    try:
        while stack:
            folder = stack[-1]
            if folder.folder_at == len(folder.folders):
                files = folder.files_before(None, with_names)
                if files:
                    yield files
                stack.pop()
                continue
            if helpers is None and listed_files >= LISTING_HELPERS_AFTER and with_stat:
                helpers = ListingHelpers.start(include_hidden, with_stat)
            text = folder.folders[folder.folder_at][0]
            result = folder.next_child(helpers, listed)
            files = folder.files_before(text, with_names)
            if files:
                yield files
            child = entered(result, folder.prefix + folder.folders[folder.folder_at - 1][1] + "/", text)
            if child:
                listed_files += len(child.texts)
                stack.append(child)
    finally:
        if helpers is not None:
            helpers.close()


def walk_images(root: Path, include_hidden: bool = False) -> Iterator[str]:
    """Image paths relative to ``root`` (``/``-separated), in output order."""
    for files in _walk(root, include_hidden, [], with_stat=False, with_names=True):
        yield from files.names


def read_path_list(list_file: Path, skipped: dict[str, int] | None = None) -> tuple[Path, list[str]]:
    """Read a text file of image paths, one a line (``#`` comments and blank lines ignored).

    Lines are path texts as the output writes them (so a ``path`` column can be fed back, odd bytes
    as ``\\xNN``), relative to the list file's folder or absolute. The input root, against which the
    output's ``path`` column is written, is the deepest folder holding every listed file. A line of
    another extension is left out like the walk leaves such a file out, and counted in ``skipped``.
    A file that is not UTF-8 text, or names no image at all, is refused: it is more likely the wrong
    file than a list.
    """
    base = list_file.resolve().parent
    absolute = []
    counts: dict[str, int] = {}
    first_other = None  # (line number, text) of the first line that is not an image path
    try:
        with open(list_file, encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                kind = extension(line.rsplit("/", 1)[-1])
                if kind not in IMAGE_EXTENSIONS:
                    counts[kind] = counts.get(kind, 0) + 1
                    first_other = first_other or (number, line)
                    continue
                absolute.append(os.path.normpath(os.path.join(base, fs_path(line))))
    except UnicodeDecodeError:
        raise UsageError(
            f"{list_file} is not UTF-8 text; give a folder, or a UTF-8 text file with one image path a line"
        ) from None
    except OSError as error:
        raise UsageError(f"cannot read {list_file}: {error.strerror}") from None
    if first_other and not absolute:
        number, line = first_other
        shown = line if len(line) <= 60 else line[:57] + "..."
        raise UsageError(
            f"{list_file} line {number} is not an image path ({shown!r}) and no line is; give a folder, or a "
            "text file with one image path a line"
        )
    if skipped is not None:
        add_counts(skipped, counts)
    if not absolute:
        return base, []
    root = os.path.commonpath(absolute)
    if len(set(absolute)) == 1 or os.path.isfile(root):
        root = os.path.dirname(root)
    relative = {os.path.relpath(p, root).replace(os.sep, "/") for p in absolute}
    return Path(root), sorted(relative, key=path_text)


def _filtered(chunks: Iterator[Files], include: Sequence[str], exclude: Sequence[str]) -> Iterator[Files]:
    if not include and not exclude:
        yield from chunks
        return
    for files in chunks:
        keep = [
            (not include or _matches(name, include)) and not (exclude and _matches(name, exclude))
            for name in files.names
        ]
        if any(keep):
            yield files if all(keep) else files.take(keep)


def _listed(root: Path, relative: list[str], with_stat: bool, chunk_rows: int = 4096) -> Iterator[Files]:
    """A list file's names, in output order, as runs of files like the walk's."""
    for start in range(0, len(relative), chunk_rows):
        names = relative[start : start + chunk_rows]
        files = Files([path_text(name) for name in names], names)
        if with_stat:
            signatures = [_signature(os.path.join(root, name)) for name in names]
            files.sizes, files.mtimes, files.readable, files.inodes, files.ctimes = (
                list(column) for column in zip(*signatures)
            )
        yield files


def list_images(
    source: Path | str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    batch_rows: int = LISTING_BATCH_ROWS,
    storage_options=None,
) -> Listing:
    """Stream the images under ``source`` (a folder to walk, a text file listing image paths, or a URL prefix)."""
    from . import store

    if store.is_url(source):
        return _list_objects(source, include, exclude, include_hidden, batch_rows, storage_options)
    filtered = bool(include or exclude)
    if source.is_dir():
        listing = Listing(root=source.resolve(), batches=iter(()))
        chunks = _walk(source, include_hidden, listing.unreadable, True, filtered, listing.skipped)
    elif source.is_file():
        skipped: dict[str, int] = {}
        root, relative = read_path_list(source, skipped)
        listing = Listing(root=root, batches=iter(()), skipped=skipped)
        chunks = _listed(root, relative, with_stat=True)
    else:
        raise UsageError(f"input {source} does not exist; give a folder of images or a file listing them")
    listing.batches = _batches(_filtered(chunks, include, exclude), listing, batch_rows)
    return listing


def _list_objects(url: str, include, exclude, include_hidden: bool, batch_rows: int, options) -> Listing:
    """The images under a URL prefix: the same extensions, filters and hidden rule as a folder walk."""
    from . import store

    root = url.rstrip("/")
    listing = Listing(root=root, batches=iter(()))
    objects = []
    for name, size, mtime in store.list_objects(root, options):
        if not include_hidden and any(part[:1] == "." for part in name.split("/")):
            continue
        kind = extension(name.rsplit("/", 1)[-1])
        if kind in IMAGE_EXTENSIONS:
            objects.append((name, size, mtime))
        else:
            listing.skipped[kind] = listing.skipped.get(kind, 0) + 1
    names, sizes, mtimes = (list(column) for column in zip(*objects)) if objects else ([], [], [])
    files = Files([path_text(name) for name in names], names, sizes, mtimes)
    kept = next(_filtered(iter([files]), include, exclude), None) if names else None
    rows = list(zip(kept.texts, kept.sizes, kept.mtimes)) if kept else []
    table = store.sorted_listing(rows, LISTING_SCHEMA)
    listing.batches = (pa.Table.from_batches([batch]) for batch in table.to_batches(batch_rows))

    def counted(batches):
        for batch in batches:
            listing.files += batch.num_rows
            yield batch

    listing.batches = counted(listing.batches)
    return listing


def _batches(chunks: Iterator[Files], listing: Listing, batch_rows: int) -> Iterator[pa.Table]:
    """Runs of files gathered into tables of about ``batch_rows`` rows."""
    columns: tuple[list, ...] = ([], [], [], [], [], [])
    for files in itertools.chain(chunks, [None]):
        if files is not None:
            signature = (files.texts, files.sizes, files.mtimes, files.readable, files.inodes, files.ctimes)
            for column, values in zip(columns, signature):
                column.extend(values)
            if len(columns[0]) < batch_rows:
                continue
        if not columns[0]:
            return
        listing.files += len(columns[0])
        yield pa.table([pa.array(c, f.type) for c, f in zip(columns, LISTING_SCHEMA)], schema=LISTING_SCHEMA)
        columns = ([], [], [], [], [], [])


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
        chunks = _walk(source, include_hidden, [], with_stat=False, with_names=True)
        root = source.resolve()
    elif source.is_file():
        root, relative = read_path_list(source)
        chunks = _listed(root, relative, with_stat=False)
    else:
        raise UsageError(f"input {source} does not exist; give a folder of images or a file listing them")
    return root, [name for files in _filtered(chunks, include, exclude) for name in files.names]
