"""Find the images to classify: a recursive, deterministic walk, or a list file."""

from __future__ import annotations

import bisect
import fnmatch
import itertools
import os
import pickle
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .errors import UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)


def is_image_name(name: str) -> bool:
    """An image extension, in any case, after a name (``.jpg`` alone is a hidden file's name)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


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


def _signature(path: str) -> tuple[int | None, int | None, bool]:
    """Size, mtime (µs) and whether this process may read the file: a file that became unreadable
    has changed for a nightly run even though its size and mtime did not."""
    try:
        stat = os.stat(path)
    except OSError:  # a broken link: still a row, whose error says so
        return None, None, False
    return stat.st_size, stat.st_mtime_ns // 1000, os.access(path, os.R_OK)


@dataclass
class _Files:
    """A run of files in output order, as columns: the unit the walk hands on (no tuple a file)."""

    texts: list[str]
    names: list[str] | None = None  # relative names, when filters or callers need them
    sizes: list | None = None
    mtimes: list | None = None
    readable: list | None = None

    def take(self, keep: list[bool]) -> _Files:
        def pick(column):
            return None if column is None else list(itertools.compress(column, keep))

        return _Files(*(pick(column) for column in (self.texts, self.names, self.sizes, self.mtimes, self.readable)))


def _text(name: str) -> str:
    return name if name.isascii() and "\\" not in name else path_text(name)


class _Folder:
    """One listed folder: its image files (stat'ed while the folder is open) and sub-folders, sorted.

    Files are stat'ed relative to the open folder (``fstatat``), one path component a lookup rather
    than the whole path: at ten million files the kernel's name lookups are most of a walk.
    """

    def __init__(self, path: str, prefix: str, prefix_text: str, fd: int, include_hidden: bool, with_stat: bool):
        self.path, self.prefix, self.prefix_text = path, prefix, prefix_text
        info = os.fstat(fd)
        self.key = (info.st_dev, info.st_ino)  # a folder reached twice (a loop, two links) is walked once
        names, folders = [], []
        with os.scandir(fd) as scan:
            for entry in scan:
                name = entry.name
                if name[0] == "." and not include_hidden:
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    folders.append((_text(name) + "/", name))
                elif is_image_name(name):
                    names.append(name)
        joined = "".join(names)
        if joined.isascii() and "\\" not in joined:  # the common case: each name is its own text
            names.sort()
            texts = names
        else:
            pairs = sorted((_text(name), name) for name in names)
            texts, names = [text for text, _ in pairs], [name for _, name in pairs]
        folders.sort()
        self.texts = [prefix_text + text for text in texts] if prefix_text else texts
        self.names = names
        self.folders = [(prefix_text + text, name) for text, name in folders]
        self.sizes = self.mtimes = self.readable = None
        if with_stat:
            self._stat(fd)
        self.file_at = self.folder_at = 0
        self.ahead: deque[int] = deque()  # requests to the listing helpers for the next sub-folders
        self.submitted = 0

    STATE = ("path", "prefix", "prefix_text", "key", "texts", "names", "folders", "sizes", "mtimes", "readable")

    def __getstate__(self) -> tuple:  # what a listing helper sends back: plain lists, cheap to pickle
        return tuple(getattr(self, name) for name in self.STATE)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(self.STATE, state):
            setattr(self, name, value)
        self.file_at = self.folder_at = self.submitted = 0
        self.ahead = deque()

    def next_child(self, helpers: _Helpers | None, lister) -> _Folder | OSError:
        """The listing of the next sub-folder; with helpers, the few after it are being listed meanwhile."""
        if helpers is not None:
            while (
                len(self.ahead) < LISTING_AHEAD
                and self.submitted < len(self.folders)
                and helpers.outstanding() < LISTING_MAX_OUTSTANDING
            ):
                self.ahead.append(helpers.submit(*self._child(self.submitted)))
                self.submitted += 1
        index = self.folder_at
        self.folder_at += 1
        if self.ahead and index < self.submitted:
            return helpers.result(self.ahead.popleft())
        self.submitted = max(self.submitted, self.folder_at)
        return lister(*self._child(index))

    def _child(self, index: int) -> tuple[str, str, str]:
        text, name = self.folders[index]
        return os.path.join(self.path, name), self.prefix + name + "/", text

    def _stat(self, fd: int) -> None:
        stat, access, R_OK = os.stat, os.access, os.R_OK
        sizes, mtimes, readable = [], [], []
        add_size, add_mtime, add_readable = sizes.append, mtimes.append, readable.append
        for name in self.names:
            try:
                info = stat(name, dir_fd=fd)
            except OSError:  # a broken link: still a row, whose error says so
                add_size(None)
                add_mtime(None)
                add_readable(False)
                continue
            add_size(info.st_size)
            add_mtime(info.st_mtime_ns // 1000)
            add_readable(access(name, R_OK, dir_fd=fd))
        self.sizes, self.mtimes, self.readable = sizes, mtimes, readable

    def files_before(self, bound: str | None, with_names: bool) -> _Files | None:
        """The files that sort before ``bound`` (a sub-folder's text; None for all that are left)."""
        start = self.file_at
        end = len(self.texts) if bound is None else bisect.bisect_left(self.texts, bound, start)
        if end == start:
            return None
        self.file_at = end

        def cut(column):
            return None if column is None else column[start:end]

        names = [self.prefix + name for name in self.names[start:end]] if with_names else None
        return _Files(self.texts[start:end], names, cut(self.sizes), cut(self.mtimes), cut(self.readable))


def _walk(root: Path, include_hidden: bool, unreadable: list, with_stat: bool, with_names: bool) -> Iterator[_Files]:
    """Yield the image files under ``root`` in output order, following symlinks without looping.

    Directories are identified by (device, inode) so a symlink loop, or two links to one folder,
    is entered once; the folders above ``root`` count as visited, so a link to one of them (a loop
    that would otherwise walk the whole disk) is not followed. Broken links are reported as files so
    that they become error rows rather than vanish. A folder that cannot be listed is recorded in
    ``unreadable`` (never silently skipped: a nightly run must not take its files for deleted).

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

    def listed(path: str, prefix: str, prefix_text: str) -> _Folder | OSError:
        return _list_folder(path, prefix, prefix_text, include_hidden, with_stat)

    def entered(result: _Folder | OSError, prefix: str, prefix_text: str) -> _Folder | None:
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
                helpers = _Helpers.start(include_hidden, with_stat)
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


def _list_folder(path: str, prefix: str, prefix_text: str, include_hidden: bool, with_stat: bool) -> _Folder | OSError:
    """One folder opened, listed, stat'ed and closed; an error is returned, not raised."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        return error
    try:
        return _Folder(path, prefix, prefix_text, fd, include_hidden, with_stat)
    except OSError as error:
        return error
    finally:
        os.close(fd)


LISTING_HELPERS_AFTER = 100_000  # files listed in this process before helper processes join the walk
LISTING_AHEAD = 16  # sub-folders of a folder handed to the helpers ahead of the walk
LISTING_MAX_OUTSTANDING = 64  # requests in flight to all helpers at once (they and their pipes stay small)


class _Helpers:
    """Processes that list folders for the walk, one core each, so that the ``fstatat`` and ``faccessat``
    of ten million files (most of a nightly run with nothing changed) use every core.

    Each is ``python -c`` (never the caller's ``__main__``) in a session of its own, reading requests
    from its stdin and answering in order on its stdout; it exits when its stdin closes, so it never
    outlives the walk. A helper that fails is dropped and its requests are listed here instead.
    """

    def __init__(self, processes: list[subprocess.Popen], include_hidden: bool, with_stat: bool):
        self.processes = processes
        self.options = (include_hidden, with_stat)
        self.pending: list[deque[int]] = [deque() for _ in processes]  # request ids, in the order sent
        self.requests: dict[int, tuple] = {}
        self.answers: dict[int, _Folder | OSError] = {}
        self.next_id = 0

    @classmethod
    def start(cls, include_hidden: bool, with_stat: bool) -> _Helpers | None:
        from .distribute import available_cores

        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        command = [sys.executable, "-c", "from batchclf.discover import _serve_listings; _serve_listings()"]
        processes = []
        for _ in range(max(1, min(available_cores(), 8))):
            try:
                processes.append(
                    subprocess.Popen(
                        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
                    )
                )
            except OSError:
                break
        return cls(processes, include_hidden, with_stat) if processes else None

    def outstanding(self) -> int:
        return len(self.requests)

    def submit(self, path: str, prefix: str, prefix_text: str) -> int:
        request, self.next_id = self.next_id, self.next_id + 1
        self.requests[request] = (path, prefix, prefix_text)
        index = request % len(self.processes)
        process = self.processes[index]
        if process is not None:
            try:
                pickle.dump((path, prefix, prefix_text, *self.options), process.stdin, pickle.HIGHEST_PROTOCOL)
                process.stdin.flush()
                self.pending[index].append(request)
            except (OSError, ValueError):
                self._drop(index)
        return request

    def result(self, request: int) -> _Folder | OSError:
        index = request % len(self.processes)
        while request not in self.answers and self.pending[index]:
            first = self.pending[index][0]
            try:
                answer = pickle.load(self.processes[index].stdout)
            except Exception:  # the helper died or spoke nonsense: this process lists its share
                self._drop(index)
                break
            self.pending[index].popleft()
            self.answers[first] = answer
        args = self.requests.pop(request)
        if request in self.answers:
            return self.answers.pop(request)
        return _list_folder(*args, *self.options)

    def _drop(self, index: int) -> None:
        process, self.processes[index] = self.processes[index], None
        self.pending[index].clear()
        if process is not None:
            _stop(process)

    def close(self) -> None:
        for index in range(len(self.processes)):
            self._drop(index)


def _stop(process: subprocess.Popen) -> None:
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve_listings() -> None:
    """A listing helper's loop: a request (folder path, prefix, prefix text, options) in, its _Folder out."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the walk's process stops the run, and then this one
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing printed by accident reaches the answers
    while True:
        try:
            path, prefix, prefix_text, include_hidden, with_stat = pickle.load(requests)
        except EOFError:
            return
        answer = _list_folder(path, prefix, prefix_text, include_hidden, with_stat)
        try:
            pickle.dump(answer, answers, pickle.HIGHEST_PROTOCOL)
            answers.flush()
        except BrokenPipeError:
            return


def walk_images(root: Path, include_hidden: bool = False) -> Iterator[str]:
    """Image paths relative to ``root`` (``/``-separated), in output order."""
    for files in _walk(root, include_hidden, [], with_stat=False, with_names=True):
        yield from files.names


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


def _filtered(chunks: Iterator[_Files], include: Sequence[str], exclude: Sequence[str]) -> Iterator[_Files]:
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


def _listed(root: Path, relative: list[str], with_stat: bool, chunk_rows: int = 4096) -> Iterator[_Files]:
    """A list file's names, in output order, as runs of files like the walk's."""
    for start in range(0, len(relative), chunk_rows):
        names = relative[start : start + chunk_rows]
        files = _Files([path_text(name) for name in names], names)
        if with_stat:
            signatures = [_signature(os.path.join(root, name)) for name in names]
            files.sizes, files.mtimes, files.readable = (list(column) for column in zip(*signatures))
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
        chunks = _walk(source, include_hidden, listing.unreadable, with_stat=True, with_names=filtered)
    elif source.is_file():
        root, relative = read_path_list(source)
        listing = Listing(root=root, batches=iter(()))
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
    objects = [
        (name, size, mtime)
        for name, size, mtime in store.list_objects(root, options)
        if is_image_name(name.rsplit("/", 1)[-1]) and (include_hidden or not any(p[:1] == "." for p in name.split("/")))
    ]
    names, sizes, mtimes = (list(column) for column in zip(*objects)) if objects else ([], [], [])
    files = _Files([path_text(name) for name in names], names, sizes, mtimes)
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


def _batches(chunks: Iterator[_Files], listing: Listing, batch_rows: int) -> Iterator[pa.Table]:
    """Runs of files gathered into tables of about ``batch_rows`` rows."""
    columns: tuple[list, list, list, list] = ([], [], [], [])
    for files in itertools.chain(chunks, [None]):
        if files is not None:
            for column, values in zip(columns, (files.texts, files.sizes, files.mtimes, files.readable)):
                column.extend(values)
            if len(columns[0]) < batch_rows:
                continue
        if not columns[0]:
            return
        listing.files += len(columns[0])
        types = (pa.string(), pa.int64(), pa.int64(), pa.bool_())
        yield pa.table([pa.array(c, t) for c, t in zip(columns, types)], schema=LISTING_SCHEMA)
        columns = ([], [], [], [])


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
