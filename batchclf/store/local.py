"""A location on this machine's file system.

The atomic write is ``fsutil.atomic_file`` (a new file ``.NAME.XXXXXXXX.partial`` beside the target,
fsync, rename, fsync of the folder). The lock is an ``flock`` on ``NAME.lock``, opened without
following links and never written; the kernel drops it when the process dies, so a killed run never
leaves a stale lock, and its holder clears the temporaries a killed writer left beside the target
(those names alone).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import LockedError, UsageError
from ..fsutil import atomic_file, can_create_files_in, is_temporary_name, open_regular_no_follow
from .base import LOCK_SUFFIX, PARTS_SUFFIX, Location, LockWait, OutsideRootError, names_made_beside

LOCK_POLL_SECONDS = 0.5  # how often a waiting run tries the lock again

_OPEN_INSIDE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class LocalLocation(Location):
    """A file or folder on disk."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def local_path(self) -> Path:
        return self.path

    def sibling(self, name: str) -> LocalLocation:
        return LocalLocation(self.path.with_name(name))

    def child(self, name: str) -> LocalLocation:
        return LocalLocation(self.path / name)

    def exists(self) -> bool:
        return self.path.exists()

    def is_file(self) -> bool:
        return self.path.is_file()

    def is_folder(self) -> bool:
        return self.path.is_dir()

    def open_read(self) -> BinaryIO:
        return open(self.path, "rb")

    @contextlib.contextmanager
    def arrow_source(self) -> Iterator[Path]:
        """The path itself: Arrow reads a local file natively."""
        yield self.path

    def read_text(self) -> str:
        return self.path.read_text()

    def atomic_write(self):
        return atomic_file(self.path)

    def lock(self, wait: bool = False, waiting: LockWait | None = None):
        return _file_lock(self, wait, waiting)

    def children(self) -> list[LocalLocation]:
        """The entries of the folder; a link or a file in its place is refused (writing there would write
        wherever it points)."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise UsageError(f"{self.path} is not a folder; remove it")
        if not self.path.exists():
            return []
        return [LocalLocation(entry) for entry in self.path.iterdir()]

    def make_folder(self) -> None:
        self.path.mkdir(exist_ok=True)

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)

    def remove_tree(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @contextlib.contextmanager
    def open_inside(self, name: str) -> Iterator[BinaryIO]:
        """The regular file ``name`` under this folder, opened for reading.

        The name is resolved first (symlinks included) and refused when it leads outside, so no byte of
        an outside file is read. ``O_NOFOLLOW`` and a look at what was actually opened
        (``/proc/self/fd``) close the gap in which a folder could be swapped for a link.
        """
        root = os.path.realpath(self.path)
        real = os.path.realpath(os.path.join(root, name))
        if not _inside(root, real):
            raise OutsideRootError(name)
        handle = os.open(real, _OPEN_INSIDE_FLAGS)
        try:
            opened = os.readlink(f"/proc/self/fd/{handle}")
        except OSError:
            opened = real  # no /proc: the resolved path is what was opened
        mode = os.fstat(handle).st_mode
        problem = None
        if not _inside(root, opened):
            problem = OutsideRootError(name)
        elif stat.S_ISDIR(mode):
            problem = IsADirectoryError(name)
        elif not stat.S_ISREG(mode):  # a FIFO, a device: never read
            problem = OSError(f"{name} is not a regular file")
        if problem:
            os.close(handle)
            raise problem
        with os.fdopen(handle, "rb") as stream:
            yield stream

    def holds(self, other: Location) -> bool:
        """Where the two are after links are resolved, so a path through a link to the folder counts too."""
        if not isinstance(other, LocalLocation) or not self.path.is_dir():
            return False
        root = os.path.realpath(self.path)
        place = os.path.join(os.path.realpath(other.path.parent), other.path.name)
        return place != root and _inside(root, place)

    def check_input(self, content_hash: bool = False) -> None:
        if not self.path.exists():
            raise UsageError(f"input {self.path} does not exist; give a folder of images or a file listing them")

    def check_output(self) -> None:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if parent.is_dir():
            _check_name_lengths(self.path.name, parent)
        if self.path.is_dir():
            raise UsageError(
                f"output {self.path} is a folder; give a file name such as {self.path}/predictions.parquet"
            )
        if not parent.is_dir():
            raise UsageError(f"output folder {parent} does not exist; create it first")
        if not can_create_files_in(parent):
            raise UsageError(f"output folder {parent} is not writable; choose another output path")


def _check_name_lengths(name: str, folder: Path) -> None:
    """Refuse an output whose run would make a name longer than the folder allows, before any work:
    otherwise the scoring finishes and the last write fails, on every run."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # no limit known: the file system will say
        return
    beside, inside = names_made_beside(name)
    size = len(os.fsencode(name))
    for what, made in beside.items():
        if len(os.fsencode(made)) > limit:
            longest = limit - (len(os.fsencode(made)) - size)
            raise UsageError(
                f"output name too long: {what} would be {len(os.fsencode(made))} bytes, more than the {limit}-byte "
                f"limit on a name in {folder} (NAME_MAX); use an output name of at most {max(longest, 1)} bytes"
            )
    for what, made in inside.items():
        if len(os.fsencode(made)) > limit:
            raise UsageError(
                f"output folder {folder} allows names of at most {limit} bytes (NAME_MAX), and {what} in "
                f"{name}{PARTS_SUFFIX}/ would be {len(os.fsencode(made))} bytes; choose another output folder"
            )


def _inside(root: str, real: str) -> bool:
    return os.path.commonpath([root, real]) == root


def _lock_holder(descriptor: int) -> str:
    """The pid holding an flock on this file, from /proc/locks (nothing is ever written to the lock file)."""
    inode = os.fstat(descriptor).st_ino
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                    return fields[4]
    except OSError:
        pass
    return "unknown"


def _holder_text(pid: str) -> str:
    """``pid 1234 on HOST since 2026-12-06T02:30:01Z``: the flock's holder is a process of this kernel."""
    import psutil

    try:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(psutil.Process(int(pid)).create_time()))
    except (psutil.Error, ValueError):
        since = "an unknown time"
    return f"pid {pid} on {socket.gethostname()} since {since}"


@contextlib.contextmanager
def _file_lock(target: LocalLocation, wait: bool = False, waiting: LockWait | None = None):
    """The lock of a local output.

    An advisory ``flock``: the kernel releases it when the process dies, even by SIGKILL, so a
    crashed run never leaves a stale lock behind. The file is opened without following symlinks and
    is never written, so a link or hard link planted there cannot make the run damage another file.
    """
    output = target.path
    descriptor = open_regular_no_follow(output.with_name(output.name + LOCK_SUFFIX), os.O_RDONLY | os.O_CREAT)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise LockedError(
                        f"another batchclf run (pid {_lock_holder(descriptor)}) is writing {output}; "
                        "wait for it, or pass --wait to queue"
                    ) from None
            if waiting is not None:
                waiting.held(lambda: _holder_text(_lock_holder(descriptor)))
            time.sleep(LOCK_POLL_SECONDS)
        _remove_stale_temporaries(output)
        yield
    finally:
        os.close(descriptor)


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files of a killed run on this output (only the lock holder writes them): the names
    ``atomic_file`` makes for it and no others, so another program's ``.NAME.html.XXXX.partial`` stays."""
    with contextlib.suppress(OSError), os.scandir(output.parent) as entries:
        for entry in entries:
            if is_temporary_name(entry.name, output) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):  # a planted link goes too, not its target
                    os.unlink(entry.path)
