"""Find the images to classify: a recursive, deterministic walk, or a list file."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


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


def walk_images(root: Path, include_hidden: bool = False) -> Iterator[str]:
    """Yield image paths relative to ``root`` (``/``-separated), following symlinks without looping.

    Directories are identified by (device, inode) so a symlink loop, or two links to one folder,
    is entered once; the folders above ``root`` count as visited, so a link to one of them (a loop
    that would otherwise walk the whole disk) is not followed. Unreadable folders are skipped;
    broken links are reported as files so that they become error rows rather than vanish.
    """
    visited: set[tuple[int, int]] = set()
    for ancestor in Path(os.path.realpath(root)).parents:
        try:
            stat = os.stat(ancestor)
        except OSError:
            continue
        visited.add((stat.st_dev, stat.st_ino))

    def listing(directory: str) -> list[os.DirEntry]:
        try:
            stat = os.stat(directory)
        except OSError:
            return []
        key = (stat.st_dev, stat.st_ino)
        if key in visited:
            return []
        visited.add(key)
        try:
            with os.scandir(directory) as entries:
                return sorted(entries, key=lambda e: e.name)
        except OSError:
            return []

    # An explicit stack rather than recursion: a deep tree must not hit Python's recursion limit.
    stack = [(os.fspath(root), "")]
    while stack:
        directory, prefix = stack.pop()
        subfolders = []
        for entry in listing(directory):
            if not include_hidden and entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append((entry.path, relative + "/"))
            elif is_image_name(entry.name):
                yield relative
        stack.extend(reversed(subfolders))


def read_path_list(list_file: Path) -> tuple[Path, list[str]]:
    """Read a text file of image paths, one a line (``#`` comments and blank lines ignored).

    Relative paths are taken from the list file's folder. The input root, against which the output's
    ``path`` column is written, is the deepest folder holding every listed file.
    """
    base = list_file.resolve().parent
    absolute = []
    with open(list_file, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                absolute.append(os.path.normpath(os.path.join(base, line)))
    if not absolute:
        return base, []
    root = os.path.commonpath(absolute)
    if len(set(absolute)) == 1 or os.path.isfile(root):
        root = os.path.dirname(root)
    return Path(root), sorted({Path(p).relative_to(root).as_posix() for p in absolute})


def discover_images(
    source: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> tuple[Path, list[str]]:
    """Return the input root and the sorted relative paths of the images under ``source``.

    ``source`` is a folder to walk or a text file listing image paths.
    """
    if source.is_dir():
        root, paths = source.resolve(), list(walk_images(source, include_hidden))
    elif source.is_file():
        root, paths = read_path_list(source)
    else:
        raise UsageError(f"input {source} does not exist; give a folder of images or a file listing them")
    if include:
        paths = [p for p in paths if _matches(p, include)]
    if exclude:
        paths = [p for p in paths if not _matches(p, exclude)]
    return root, sorted(paths)
