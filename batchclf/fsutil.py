"""File-system policies, one copy each: the atomic write, fsync, "is this process alive", the content
digests and "can I write here". Every module that writes or checks goes through these, so a policy
(a file's mode, what an interrupted write leaves behind) is decided once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError

READ_BLOCK = 1 << 20


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: Path | str) -> None:
    """Flush a file or a folder (a folder's entry list: what makes a rename durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def temporary_prefix(target: Path) -> str:
    """The prefix of every temporary name made beside ``target``: ``.NAME.``, so a reader of the folder
    can tell whose it is (``.NAME.XXXXXXXX.partial``)."""
    return f".{target.name}."


TEMPORARY_SUFFIX = ".partial"
# The random part of a temporary name: what ``mkstemp`` uses, made here so that the one pattern below
# describes every name this writer makes, and the cleanup of a killed run removes those and no others
# (``.NAME.html.1234.partial`` is another program's).
TEMPORARY_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"
TEMPORARY_RANDOM_LENGTH = 8
_TEMPORARY_RANDOM = f"[{re.escape(TEMPORARY_CHARACTERS)}]{{{TEMPORARY_RANDOM_LENGTH}}}"


def temporary_name(target: Path) -> str:
    """A fresh temporary name for ``target``: ``.NAME.`` + 8 random characters + ``.partial``."""
    random = "".join(secrets.choice(TEMPORARY_CHARACTERS) for _ in range(TEMPORARY_RANDOM_LENGTH))
    return f"{temporary_prefix(target)}{random}{TEMPORARY_SUFFIX}"


def is_temporary_name(name: str, target: Path | None = None) -> bool:
    """Whether ``name`` is one ``temporary_name`` makes: for ``target``, or (None) for any file."""
    prefix = re.escape(temporary_prefix(target)) if target is not None else r"\..+\."
    return re.fullmatch(prefix + _TEMPORARY_RANDOM + re.escape(TEMPORARY_SUFFIX), name, re.DOTALL) is not None


def _create_temporary(folder: Path, target: Path) -> tuple[int, Path]:
    """A new file under a fresh temporary name (exclusive, never through a link, mode 0600 like ``mkstemp``)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(tempfile.TMP_MAX):
        path = folder / temporary_name(target)
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {target}")


@contextlib.contextmanager
def atomic_file(target: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary stream to a new file beside ``target`` that replaces it only when the block ends.

    The temporary name is made as ``mkstemp`` makes one (exclusive, unpredictable: a link planted at a
    guessable name cannot redirect the write); the data is fsynced before the rename and the folder
    after it, so a crash at any point leaves the old file or the new one. The file gets the mode a
    plain ``open`` would give it (``0o666 & ~umask``) unless ``mode`` says otherwise. An exception
    removes the temporary file.
    """
    folder = _folder_of(target)
    descriptor, partial = _create_temporary(folder, target)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(partial, (0o666 & ~current_umask()) if mode is None else mode)
        os.replace(partial, target)
        fsync_path(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def write_atomically(target: Path, data: bytes | str, mode: int | None = None) -> int:
    """``data`` (text as UTF-8) written to ``target`` through ``atomic_file``; return its size in bytes."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(target, mode) as stream:
        stream.write(payload)
    return len(payload)


def open_regular_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open without following a symlink, and only a regular file (the folder may be writable by others).

    Non-blocking, so a FIFO planted there cannot hang the open; refused in one line that says what to do.
    """
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error.strerror} (a symlink there is refused); remove it") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UsageError(f"{path} is not a regular file; remove it")
    return descriptor


def process_alive(pid: int | str | None) -> bool:
    """Whether a process of this pid runs on this machine (one of another user's counts as alive).

    Anything that is not a pid is taken as alive: the caller must then not treat its holder as gone.
    """
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):  # alive under another user, or not a pid at all
        return True
    return True


def boot_id() -> str:
    """What names this boot of this machine's kernel: containers on one machine share it, a reboot changes
    it. A pid and a start time name one process only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # no /proc: the boot time stands for it
        import psutil

        return f"booted-{psutil.boot_time():.0f}"


def process_start(pid: int | str) -> str | None:
    """When the process ``pid`` started, as this kernel counts it (clock ticks after boot: field 22 of
    ``/proc/PID/stat``), so two processes given one pid are told apart; None when no such process runs."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as stream:
            status = stream.read()
        return status[status.rindex(b")") + 2 :].split()[19].decode()  # the name, in (), may hold spaces
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, IndexError):  # no /proc, or not a pid: ask psutil
        import psutil

        try:
            return f"{psutil.Process(int(pid)).create_time():.3f}"
        except (psutil.Error, ValueError, TypeError):
            return None


def private_folder() -> Path:
    """A folder no other user can write to, for files whose name other runs of this user must find:
    ``$XDG_RUNTIME_DIR``, or ``batchclf-UID`` in the system temporary folder, made 0700. One that is a
    link, another user's, or open to others is refused (a file there could be held or replaced)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _is_private(Path(runtime)):
        return Path(runtime)
    folder = Path(tempfile.gettempdir()) / f"batchclf-{os.getuid()}"
    try:
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    if not _is_private(folder):
        raise UsageError(f"{folder} must be a folder of this user that only this user can open (0700); remove it")
    return folder


def _is_private(folder: Path) -> bool:
    try:
        status = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & 0o077


def creation_error(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None: one can). Tried, not guessed: permission bits
    say nothing for root (``os.access`` answers yes) or on a read-only mount."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".batchclf-probe-"):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def change_marks(info: os.stat_result) -> tuple[int, int | None]:
    """What tells a file rewritten with the same size and mtime (``rsync -a``, ``cp -p``, ``tar x``):
    its inode, and its ctime (µs) when it has one link only.

    A file replaced through a new file and a rename gets a new inode; one rewritten in place gets a
    new ctime, which no program can set back. ctime also moves when a hard link to the file is made
    or removed (a snapshot tree of links, ``rsnapshot``), so it counts only for a file with one link.
    """
    return info.st_ino, info.st_ctime_ns // 1000 if info.st_nlink == 1 else None


def can_create_files_in(folder: Path) -> bool:
    return creation_error(folder) is None


# --------------------------------------------------------------------------- content digests


def content_digest(blocks: Iterable[bytes]) -> str:
    """The ``--hash`` of a file's bytes: BLAKE2b-128 in hex (fast, in the standard library).

    The one definition: the planner hashes files on disk with it and the workers hash the bytes they
    decoded with it, and a row is reused only when the two agree.
    """
    digest = hashlib.blake2b(digest_size=16)
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


class NotRegularFileError(OSError):
    """A FIFO, socket, device or folder where a file's content was expected: never read from."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` says the path is, in words."""
    kinds = {
        stat.S_ISREG: "a regular file",
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def open_regular(path: Path | str) -> int:
    """A read-only descriptor on ``path`` (symlinks followed), only if it is a regular file.

    Opened non-blocking and without becoming a controlling terminal, and checked on the descriptor,
    so a FIFO, a socket or a device under an image name (or a link to ``/dev/zero``) is refused at
    once instead of hanging or feeding endless bytes: every reader of file content goes through here.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError:
        try:  # a socket cannot be opened at all (ENXIO): say what it is rather than the errno's words
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"not a regular file: {file_kind(mode)}") from None
        raise
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise NotRegularFileError(f"not a regular file: {file_kind(mode)}")
    return descriptor


def read_blocks(path: Path | str) -> Iterator[bytes]:
    """A regular file's bytes in 1 MiB blocks (``open_regular``: special files raise, never block)."""
    with os.fdopen(open_regular(path), "rb") as stream:
        yield from iter(lambda: stream.read(READ_BLOCK), b"")


def sha256_file(path: Path | str) -> str:
    """SHA-256 of a file's bytes in hex: the identity of a training image's content."""
    digest = hashlib.sha256()
    for block in read_blocks(path):
        digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path, beside: Sequence[str] = ()) -> str:
    """SHA-256 of a file, or of a folder's files with their relative names: what identifies a model.

    ``beside`` names more files a model file reads, relative to its folder (an ONNX model's external
    weights): each is hashed after the file, with its name, in sorted order. Without them the digest
    is the file's alone, as it always was.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        for block in read_blocks(file):
            digest.update(block)
    for name in sorted(beside):
        digest.update(b"\0" + name.encode("utf-8", "surrogateescape") + b"\0")
        for block in read_blocks(path.resolve().parent / name):
            digest.update(block)
    return digest.hexdigest()
