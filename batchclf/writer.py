"""The output: its schema, the lock, the per-shard part files (resumable), and the atomic final file.

Each finished shard is written to ``OUTPUT.parts/`` under a temporary name and renamed into place, so
a part that exists is complete. Parts are rows like any other: every row carries the size and mtime
of the bytes it was scored from, and every part records the model and result options that made it,
so a rerun reuses exactly the rows that still describe their files (see ``plan.py``). Each run is an
*attempt* with its own part names; when attempts overlap, the newest row of a path wins.

The output may be a local ``Path`` or an object in a bucket (``storage.ObjectPath``): every reader
here opens either the same way, and the three writes (a part, the output, the lock) have an
object-store flavour behind the same names: a file built in the system's temporary folder and
uploaded in one PUT, and a lock object made by a conditional create.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError
from .fsutil import atomic_file, open_regular_no_follow, process_alive, write_atomically
from .storage import ObjectPath

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


def output_lock(output: Path | ObjectPath, wait: bool = False):
    """Hold ``OUTPUT.lock`` for the run, so two runs never write one output (a context manager)."""
    return _object_lock(output, wait) if isinstance(output, ObjectPath) else _file_lock(output, wait)


@contextlib.contextmanager
def _file_lock(output: Path, wait: bool = False):
    """The lock of a local output.

    An advisory ``flock``: the kernel releases it when the process dies, even by SIGKILL, so a
    crashed run never leaves a stale lock behind. The file is opened without following symlinks and
    is never written, so a link or hard link planted there cannot make the run damage another file.
    """
    from .errors import LockedError

    descriptor = open_regular_no_follow(output.with_name(output.name + ".lock"), os.O_RDONLY | os.O_CREAT)
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


LOCK_POLL_SECONDS = 2.0


def _lock_record(lock: ObjectPath) -> dict | None:
    """What the lock object says about its holder; None when it is gone, {} when it cannot be read."""
    try:
        record = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _break_if_stale(lock: ObjectPath, record: dict) -> bool:
    """Remove a lock left by a run of this host that is no longer running; True when it was removed.

    Only a holder on this host can be checked (its pid). A local ``flock`` keyed by the lock's URL
    makes the check and the removal one step among this host's runs, so two of them never both
    break one stale lock and then both hold a fresh one; runs elsewhere never break a lock at all.
    """
    if record.get("host") != socket.gethostname() or process_alive(record.get("pid")):
        return False
    key = hashlib.sha256(lock.url.encode()).hexdigest()[:24]
    guard = open_regular_no_follow(Path(tempfile.gettempdir()) / f".batchclf-lock-{key}", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _lock_record(lock) == record:
            lock.unlink()
        return True
    finally:
        os.close(guard)


@contextlib.contextmanager
def _object_lock(output: ObjectPath, wait: bool = False):
    """The lock of an output in a bucket: ``OUTPUT.lock``, an object made by a conditional create.

    The object says who holds it (host, pid, start time). A process killed by SIGKILL cannot remove
    it; the next run on the same host sees that pid is gone and takes the lock over. A holder on
    another host cannot be checked, so its lock is never broken: the run exits 4 and says how to
    remove it once that run is known to be gone. The lock is removed when the run ends, by any
    means short of SIGKILL (an error, SIGINT, SIGTERM), and only if it is still this run's.
    """
    from .errors import LockedError

    lock = output.with_name(output.name + ".lock")
    mine = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": os.urandom(8).hex(),
    }
    while not lock.create(json.dumps(mine).encode()):
        record = _lock_record(lock)
        if record is None or _break_if_stale(lock, record):
            continue  # released meanwhile, or left by a dead run of this host: try again
        if not wait:
            who = f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('started', '?')}"
            raise LockedError(
                f"another batchclf run ({who}) holds {lock}; wait for it, or pass --wait to queue; "
                f"if that run is no longer running, delete {lock} and run again"
            )
        time.sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        if _lock_record(lock) == mine:
            lock.unlink()


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


@contextlib.contextmanager
def readable(path: Path | ObjectPath):
    """What Arrow reads: a local path as itself (read natively), an object as an open fsspec file."""
    if isinstance(path, ObjectPath):
        with path.open("rb") as stream:
            yield stream
    else:
        yield path


def read_schema(path: Path | ObjectPath) -> pa.Schema:
    """The schema of a Parquet file on disk or in a bucket (only its footer is read)."""
    with readable(path) as source:
        return pq.read_schema(source)


def read_run_metadata(path: Path | ObjectPath) -> dict:
    """The ``batchclf`` metadata (model, version, root, options) stored in an output file."""
    metadata = read_schema(path).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))


@contextlib.contextmanager
def atomic_parquet(target: Path | ObjectPath, schema: pa.Schema, **options) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter on a fresh temporary file beside ``target``, renamed over it only when complete.

    The name comes from ``mkstemp`` (never predictable, never a link), the data is fsynced before
    the rename and the folder after it, so a crash at any point leaves the old file or the new one.
    An object in a bucket is built in the system's temporary folder and uploaded when complete: a
    reader of the bucket sees the old object or the new one, never part of one.
    """
    if isinstance(target, ObjectPath):
        with tempfile.TemporaryDirectory(prefix="batchclf-upload-") as folder:
            local = Path(folder) / "upload.parquet"
            with pq.ParquetWriter(local, schema, compression="zstd", **options) as writer:
                yield writer
            target.upload(local)
        return
    with atomic_file(target) as stream:
        with pq.ParquetWriter(stream, schema, compression="zstd", **options) as writer:
            yield writer


def write_text_atomically(path: Path, text: str) -> int:
    """Write ``text`` to ``path`` atomically (``fsutil.atomic_file``); return its size in bytes."""
    return write_atomically(path, text)


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
        if not self._exists():
            return None
        try:
            previous = json.loads((self.folder / "run.json").read_text())
        except (OSError, ValueError):
            previous = {}
        if not isinstance(previous, dict) or previous.get("reuse_key") != self.reuse_key:
            self.remove()
            return f"not reusing {self.folder}: it was made with another model, options or input"
        self.attempt = int(previous.get("attempts", 0)) + 1
        self._remove_leftovers()
        return None

    def _exists(self) -> bool:
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise UsageError(f"{self.folder} is not a folder; remove it")
        return self.folder.exists()

    def _remove_leftovers(self) -> None:
        for leftover in self.folder.glob(".*.partial"):
            leftover.unlink()

    def _prepare(self) -> None:
        if not self.prepared:
            self._write_record(json.dumps({"reuse_key": self.reuse_key, "attempts": self.attempt}))
            self.prepared = True

    def _write_record(self, text: str) -> None:
        self.folder.mkdir(exist_ok=True)
        write_text_atomically(self.folder / "run.json", text)

    def part_path(self, shard_name: str) -> Path:
        return self.folder / f"attempt-{self.attempt:04d}-{shard_name}.parquet"

    def _parts(self) -> list:
        return list(self.folder.glob("attempt-*.parquet"))

    def earlier_attempts(self) -> list[list[Path]]:
        """Parts of earlier attempts made under this reuse key: one sorted list per attempt, oldest first."""
        by_attempt: dict[int, list[Path]] = {}
        for path in self._parts():
            match = PART_NAME.match(path.name)
            if match and int(match.group(1)) < self.attempt and self._made_here(path):
                by_attempt.setdefault(int(match.group(1)), []).append(path)
        return [sorted(by_attempt[a], key=str) for a in sorted(by_attempt)]

    def _made_here(self, part) -> bool:
        try:
            metadata = read_schema(part).metadata or {}
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


class ObjectPartsStore(PartsStore):
    """The parts of an output in a bucket: objects under ``OUTPUT.parts/``, with the same names.

    A PUT is atomic, so an object there is complete and no temporary name is ever left behind.
    """

    def _exists(self) -> bool:
        return bool(self.folder.children())

    def _remove_leftovers(self) -> None:
        pass

    def _write_record(self, text: str) -> None:
        (self.folder / "run.json").write_bytes(text.encode("utf-8"))

    def _parts(self) -> list:
        return self.folder.children()

    def remove(self) -> None:
        self.folder.remove_prefix()


def parts_store(output: Path | ObjectPath, reuse_key: str) -> PartsStore:
    """The parts store beside ``output``: a folder on disk, or a prefix in the output's bucket."""
    return ObjectPartsStore(output, reuse_key) if isinstance(output, ObjectPath) else PartsStore(output, reuse_key)


def read_parts(parts: list[Path | ObjectPath], columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The rows of consecutive parts, in order: a path-sorted stream when the parts are one attempt's."""
    for part in parts:
        with readable(part) as source:
            table = pq.read_table(source, columns=columns)
        if table.num_rows:
            yield table


def read_output(
    path: Path | ObjectPath, columns: list[str] | None = None, batch_rows: int = 65536
) -> Iterator[pa.Table]:
    """An output file (on disk or in a bucket) as a stream of tables, one row group's worth at a time."""
    with readable(path) as source:
        parquet = pq.ParquetFile(source)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch])
