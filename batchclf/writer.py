"""The output: its schema, the lock, the per-shard part files (resumable), and the atomic final file.

Each finished shard is written to ``OUTPUT.parts/`` under a temporary name and renamed into place, so
a part that exists is complete. Parts are rows like any other: every row carries the size and mtime
of the bytes it was scored from, and every part records the model and result options that made it,
so a rerun reuses exactly the rows that still describe their files (see ``plan.py``). Each run is an
*attempt* with its own part names; when attempts overlap, the newest row of a path wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError

TOPK_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))
BASE_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("topk", TOPK_TYPE),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("mtime", pa.timestamp("us", tz="UTC")),
    pa.field("model", pa.string(), nullable=False),
    # True when the file could not be checked (its folder was unreadable) and last run's row was kept.
    pa.field("unverified", pa.bool_()),
]
PART_KEY = b"batchclf_part"
PART_NAME = re.compile(r"attempt-(\d{4})-(.+)\.parquet$")
METADATA_KEY = b"batchclf"


def output_schema(embedding_size: int | None = None, content_hash: bool = False) -> pa.Schema:
    fields = list(BASE_FIELDS)
    if embedding_size:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_size)))
    if content_hash:
        fields.append(pa.field("content_hash", pa.string()))
    return pa.schema(fields)


def _open_no_follow(path: Path, flags: int) -> int:
    """Open without following a symlink, and only a regular file: the folder may be writable by others."""
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error.strerror} (a symlink there is refused); remove it") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UsageError(f"{path} is not a regular file; remove it")
    return descriptor


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


@contextlib.contextmanager
def output_lock(output: Path, wait: bool = False):
    """Hold ``OUTPUT.lock`` for the run, so two runs never write one output.

    An advisory ``flock``: the kernel releases it when the process dies, even by SIGKILL, so a
    crashed run never leaves a stale lock behind. The file is opened without following symlinks and
    is never written, so a link or hard link planted there cannot make the run damage another file.
    """
    from .errors import LockedError

    descriptor = _open_no_follow(output.with_name(output.name + ".lock"), os.O_RDONLY | os.O_CREAT)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(
                f"another batchclf run (pid {_lock_holder(descriptor)}) is writing {output}; "
                "wait for it, or pass --wait to queue"
            ) from None
        _remove_stale_temporaries(output)
        yield
    finally:
        os.close(descriptor)


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files of a killed run on this output (only the lock holder writes them)."""
    prefix = f".{output.name}."
    with contextlib.suppress(OSError), os.scandir(output.parent) as entries:
        for entry in entries:
            if (
                entry.name.startswith(prefix)
                and entry.name.endswith(".partial")
                and not entry.is_dir(follow_symlinks=False)  # a planted link goes too, not its target
            ):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def read_run_metadata(path: str | os.PathLike) -> dict:
    """The ``batchclf`` metadata (model, version, root, options) stored in an output file."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_parquet(target: Path, schema: pa.Schema, **options) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter on a fresh temporary file beside ``target``, renamed over it only when complete.

    The name comes from ``mkstemp`` (never predictable, never a link), the data is fsynced before
    the rename and the folder after it, so a crash at any point leaves the old file or the new one.
    """
    descriptor, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            with pq.ParquetWriter(stream, schema, compression="zstd", **options) as writer:
                yield writer
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, target)
        fsync_folder(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def write_text_atomically(path: Path, text: str) -> int:
    """Write ``text`` to ``path`` through a new file of our own beside it, then rename it; return its size.

    ``mkstemp`` creates the file exclusively (``O_EXCL``) under a random name, so a link planted at a
    predictable temporary name cannot redirect the write; a reader sees the old file or the new one.
    The file gets the mode a plain ``open`` would give it.
    """
    data = text.encode("utf-8")
    folder = path.parent if str(path.parent) else Path(".")
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return len(data)


class PartsStore:
    """The folder of finished shard results beside the output.

    ``run.json`` records the reuse key (model, class names, result options, input root): a folder
    made under another key is removed, since none of its rows could be reused. Each run opens a new
    attempt; parts of earlier attempts stay until the output is written.
    """

    def __init__(self, output: Path, reuse_key: str):
        self.folder = output.with_name(output.name + ".parts")
        self.reuse_key = reuse_key
        self.attempt = 1
        self.prepared = False

    def open(self) -> str | None:
        """Find the attempts made before; return a message when existing parts were discarded.

        The folder itself is made by the first ``write``, so a run that scores nothing leaves none.
        """
        message = None
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise UsageError(f"{self.folder} is not a folder; remove it")
        if self.folder.exists():
            try:
                previous = json.loads((self.folder / "run.json").read_text())
            except (OSError, ValueError):
                previous = {}
            if previous.get("reuse_key") != self.reuse_key:
                shutil.rmtree(self.folder)
                message = f"not reusing {self.folder}: it was made with another model, options or input"
            else:
                self.attempt = int(previous.get("attempts", 0)) + 1
                for leftover in self.folder.glob(".*.partial"):
                    leftover.unlink()
        return message

    def _prepare(self) -> None:
        if not self.prepared:
            self.folder.mkdir(exist_ok=True)
            write_text_atomically(
                self.folder / "run.json", json.dumps({"reuse_key": self.reuse_key, "attempts": self.attempt})
            )
            self.prepared = True

    def part_path(self, shard_name: str) -> Path:
        return self.folder / f"attempt-{self.attempt:04d}-{shard_name}.parquet"

    def earlier_attempts(self) -> list[list[Path]]:
        """Parts of earlier attempts made under this reuse key: one sorted list per attempt, oldest first."""
        by_attempt: dict[int, list[Path]] = {}
        for path in self.folder.glob("attempt-*.parquet"):
            match = PART_NAME.match(path.name)
            if match and int(match.group(1)) < self.attempt and self._made_here(path):
                by_attempt.setdefault(int(match.group(1)), []).append(path)
        return [sorted(by_attempt[a]) for a in sorted(by_attempt)]

    def _made_here(self, part: Path) -> bool:
        try:
            metadata = pq.read_schema(part).metadata or {}
        except (OSError, pa.ArrowInvalid):
            return False
        return metadata.get(PART_KEY, b"").decode() == self.reuse_key

    def write(self, shard_name: str, table: pa.Table) -> Path:
        self._prepare()
        target = self.part_path(shard_name)
        table = table.replace_schema_metadata({PART_KEY: self.reuse_key.encode()})
        with atomic_parquet(target, table.schema) as writer:
            writer.write_table(table)
        return target

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_parts(parts: list[Path], columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The rows of consecutive parts, in order: a path-sorted stream when the parts are one attempt's."""
    for part in parts:
        table = pq.read_table(part, columns=columns)
        if table.num_rows:
            yield table


def read_output(path: Path, columns: list[str] | None = None, batch_rows: int = 65536) -> Iterator[pa.Table]:
    """An output file as a stream of tables, one row group's worth at a time."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        yield pa.Table.from_batches([batch])
