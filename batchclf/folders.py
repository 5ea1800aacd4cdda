"""One folder listed: its image files stat'ed and its sub-folders sorted, by their path texts, in this
process or in helper processes that list the next folders while the walk (``discover.py``) hands on
the ones before. The walk's order and its seen-folder check stay in the walk, so the listing is the
same whoever lists a folder.
"""

from __future__ import annotations

import bisect
import itertools
import os
import pickle
import subprocess
import sys
from collections import deque
from dataclasses import dataclass

from .fsutil import change_marks
from .machine import available_cores
from .paths import IMAGE_EXTENSIONS, extension, path_text

LISTING_AHEAD = 16  # sub-folders of a folder handed to the helpers ahead of the walk
LISTING_MAX_OUTSTANDING = 64  # requests in flight to all helpers at once (they and their pipes stay small)


@dataclass
class Files:
    """A run of files in output order, as columns: the unit the walk hands on (no tuple a file)."""

    texts: list[str]
    names: list[str] | None = None  # relative names, when filters or callers need them
    sizes: list | None = None
    mtimes: list | None = None
    readable: list | None = None
    inodes: list | None = None
    ctimes: list | None = None

    def columns(self) -> tuple:
        return (self.texts, self.names, self.sizes, self.mtimes, self.readable, self.inodes, self.ctimes)

    def take(self, keep: list[bool]) -> Files:
        def pick(column):
            return None if column is None else list(itertools.compress(column, keep))

        return Files(*(pick(column) for column in self.columns()))


def _text(name: str) -> str:
    return name if name.isascii() and "\\" not in name else path_text(name)


class Folder:
    """One listed folder: its image files (stat'ed while the folder is open) and sub-folders, sorted.

    Files are stat'ed relative to the open folder (``fstatat``), one path component a lookup rather
    than the whole path: at ten million files the kernel's name lookups are most of a walk.
    """

    def __init__(self, path: str, prefix: str, prefix_text: str, fd: int, include_hidden: bool, with_stat: bool):
        self.path, self.prefix, self.prefix_text = path, prefix, prefix_text
        info = os.fstat(fd)
        self.key = (info.st_dev, info.st_ino)  # a folder reached twice (a loop, two links) is walked once
        names, folders = [], []
        skipped: dict[str, int] = {}  # files of other extensions, by extension: reported, never scored
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
                elif (kind := extension(name)) in IMAGE_EXTENSIONS:
                    names.append(name)
                else:
                    skipped[kind] = skipped.get(kind, 0) + 1
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
        self.skipped = skipped
        self.folders = [(prefix_text + text, name) for text, name in folders]
        self.sizes = self.mtimes = self.readable = self.inodes = self.ctimes = None
        if with_stat:
            self._stat(fd)
        self.file_at = self.folder_at = 0
        self.ahead: deque[int] = deque()  # requests to the listing helpers for the next sub-folders
        self.submitted = 0

    STATE = (
        "path",
        "prefix",
        "prefix_text",
        "key",
        "texts",
        "names",
        "folders",
        "sizes",
        "mtimes",
        "readable",
        "inodes",
        "ctimes",
        "skipped",
    )

    def __getstate__(self) -> tuple:  # what a listing helper sends back: plain lists, cheap to pickle
        return tuple(getattr(self, name) for name in self.STATE)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(self.STATE, state):
            setattr(self, name, value)
        self.file_at = self.folder_at = self.submitted = 0
        self.ahead = deque()

    def next_child(self, helpers: ListingHelpers | None, lister) -> Folder | OSError:
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
        sizes, mtimes, readable, inodes, ctimes = [], [], [], [], []
        add_size, add_mtime, add_readable = sizes.append, mtimes.append, readable.append
        add_inode, add_ctime = inodes.append, ctimes.append
        for name in self.names:
            try:
                info = stat(name, dir_fd=fd)
            except OSError:  # a broken link: still a row, whose error says so
                add_size(None)
                add_mtime(None)
                add_readable(False)
                add_inode(None)
                add_ctime(None)
                continue
            add_size(info.st_size)
            add_mtime(info.st_mtime_ns // 1000)
            add_readable(access(name, R_OK, dir_fd=fd))
            inode, ctime = change_marks(info)
            add_inode(inode)
            add_ctime(ctime)
        self.sizes, self.mtimes, self.readable, self.inodes, self.ctimes = sizes, mtimes, readable, inodes, ctimes

    def files_before(self, bound: str | None, with_names: bool) -> Files | None:
        """The files that sort before ``bound`` (a sub-folder's text; None for all that are left)."""
        start = self.file_at
        end = len(self.texts) if bound is None else bisect.bisect_left(self.texts, bound, start)
        if end == start:
            return None
        self.file_at = end

        def cut(column):
            return None if column is None else column[start:end]

        names = [self.prefix + name for name in self.names[start:end]] if with_names else None
        return Files(
            self.texts[start:end],
            names,
            cut(self.sizes),
            cut(self.mtimes),
            cut(self.readable),
            cut(self.inodes),
            cut(self.ctimes),
        )


def list_folder(path: str, prefix: str, prefix_text: str, include_hidden: bool, with_stat: bool) -> Folder | OSError:
    """One folder opened, listed, stat'ed and closed; an error is returned, not raised."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        return error
    try:
        return Folder(path, prefix, prefix_text, fd, include_hidden, with_stat)
    except OSError as error:
        return error
    finally:
        os.close(fd)


class ListingHelpers:
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
        self.answers: dict[int, Folder | OSError] = {}
        self.next_id = 0

    @classmethod
    def start(cls, include_hidden: bool, with_stat: bool) -> ListingHelpers | None:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        command = [sys.executable, "-c", "from batchclf.folders import serve_listings; serve_listings()"]
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

    def result(self, request: int) -> Folder | OSError:
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
        return list_folder(*args, *self.options)

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


def serve_listings() -> None:
    """A listing helper's loop: a request (folder path, prefix, prefix text, options) in, its Folder out."""
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
        answer = list_folder(path, prefix, prefix_text, include_hidden, with_stat)
        try:
            pickle.dump(answer, answers, pickle.HIGHEST_PROTOCOL)
            answers.flush()
        except BrokenPipeError:
            return
