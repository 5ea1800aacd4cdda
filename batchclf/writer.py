"""The output: its schema, per-shard part files (resumable), and the atomic merge into one Parquet file.

Each finished shard is written to ``OUTPUT.parts/`` under a temporary name and renamed into place, so
a part that exists is complete. ``run.json`` in that folder records what produced the parts; a run
with the same fingerprint reuses them, any other run starts afresh. The merge streams the parts in
shard order (shards are slices of the sorted path list, so the result is sorted by path) into a
temporary file that is renamed over the output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
]
METADATA_KEY = b"batchclf"


def output_schema(embedding_size: int | None = None, content_hash: bool = False) -> pa.Schema:
    fields = list(BASE_FIELDS)
    if embedding_size:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_size)))
    if content_hash:
        fields.append(pa.field("content_hash", pa.string()))
    return pa.schema(fields)


@contextlib.contextmanager
def output_lock(output: Path, wait: bool = False):
    """Hold ``OUTPUT.lock`` for the run, so two runs never write one output.

    An advisory ``flock``: the kernel releases it when the process dies, even by SIGKILL, so a
    crashed run never leaves a stale lock behind.
    """
    from .errors import LockedError

    path = output.with_name(output.name + ".lock")
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise LockedError(
                f"another batchclf run (pid {holder}) is writing {output}; wait for it, or pass --wait to queue"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()


def read_run_metadata(path: str | os.PathLike) -> dict:
    """The ``batchclf`` metadata (model, version, root, options) stored in an output file."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))


class PartsStore:
    """The folder of finished shard results beside the output."""

    def __init__(self, output: Path, fingerprint: str):
        self.folder = output.with_name(output.name + ".parts")
        self.fingerprint = fingerprint

    def open(self) -> str | None:
        """Prepare the folder; return a message when existing parts were discarded."""
        manifest = self.folder / "run.json"
        message = None
        if self.folder.exists():
            try:
                previous = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, ValueError):
                previous = None
            if previous != self.fingerprint:
                shutil.rmtree(self.folder)
                message = (
                    f"not reusing {self.folder}: it was made by a different command (model, options or input changed)"
                )
        self.folder.mkdir(parents=True, exist_ok=True)
        if not manifest.exists():
            manifest.write_text(json.dumps({"fingerprint": self.fingerprint}))
        return message

    def part_path(self, shard_name: str) -> Path:
        return self.folder / f"{shard_name}.parquet"

    def is_done(self, shard_name: str) -> bool:
        return self.part_path(shard_name).exists()

    def write(self, shard_name: str, table: pa.Table) -> None:
        target = self.part_path(shard_name)
        partial = target.with_name(f".{target.name}.partial")
        pq.write_table(table, partial)
        with open(partial, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(partial, target)  # the rename is the completion marker

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def merge_parts(
    parts: list[Path],
    output: Path,
    schema: pa.Schema,
    metadata: dict,
    carried: pa.Table | None = None,
    hashes: dict[str, str | None] | None = None,
) -> None:
    """Write the parts, in order, into ``output`` atomically.

    Plain runs stream part by part (constant memory). Incremental runs interleave the rows
    ``carried`` over from the previous output, which needs one sort by path in memory.
    """
    schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    plain = schema.remove_metadata()
    partial = output.with_name(f".{output.name}.partial{os.getpid()}")

    def conform(table: pa.Table) -> pa.Table:
        if hashes is not None and "content_hash" not in table.column_names:
            values = [hashes.get(p) for p in table.column("path").to_pylist()]
            table = table.append_column("content_hash", pa.array(values, pa.string()))
        return table.select(plain.names).cast(plain)

    try:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            if carried is None:
                for part in parts:
                    writer.write_table(conform(pq.read_table(part)).replace_schema_metadata(schema.metadata))
            else:
                tables = [conform(carried)] + [conform(pq.read_table(part)) for part in parts]
                merged = pa.concat_tables(tables).sort_by("path")
                writer.write_table(merged.replace_schema_metadata(schema.metadata), row_group_size=65536)
        os.replace(partial, output)
    finally:
        if partial.exists():
            partial.unlink()
