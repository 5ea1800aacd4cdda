"""What changed since the previous output, path by path: the ``--changes FILE`` of ``batchclf run``.

The previous output (whatever made it) and the output being written are walked in step, one bounded
batch at a time (``merge.aligned``), before the new file replaces the old. A path is

- ``new``: not in the previous output;
- ``dropped``: in the previous output, gone from this one (its file was deleted);
- ``newly_failing``: ok before, an error now; ``recovered``: an error before, ok now;
- ``changed``: otherwise, when its file changed (size, mtime, inode, ctime or content hash, wherever
  both rows have them) or its top-1 label did (a rescore with another model or options). A file
  rewritten that keeps its label counts as changed: its score, size or content did change.

Unchanged rows, reused or rescored to the same label, are not listed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import CHANGE_KINDS
from .merge import READ_ERRORS, aligned, conform, in_order
from .store import Location
from .store.parquet import read_output, read_schema

COMPARED = pa.schema(
    [
        ("path", pa.string()),
        ("status", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("error", pa.string()),
        ("bytes", pa.int64()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("inode", pa.int64()),
        ("ctime", pa.timestamp("us", tz="UTC")),
        ("content_hash", pa.string()),
    ]
)
CASE_ORDER = ("new", "dropped", "newly_failing", "recovered", "changed")  # the first that holds names the kind
FILE_MARKS = ("bytes", "mtime", "inode", "ctime", "content_hash")
CHANGES_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        ("old_label", pa.string()),
        ("new_label", pa.string()),
        ("old_score", pa.float32()),
        ("new_score", pa.float32()),
        ("old_error", pa.string()),
        ("new_error", pa.string()),
    ]
)


def change_records(old: pa.Table | None, new: pa.Table | None) -> pa.Table:
    """The changes among one step's paths (``CHANGES_SCHEMA``, path-sorted): ``old`` and ``new`` hold
    ``COMPARED``'s columns (missing ones are null) and cover the same range of paths."""
    old = conform(old if old is not None else COMPARED.empty_table(), COMPARED)
    new = conform(new if new is not None else COMPARED.empty_table(), COMPARED)
    joined = _prefixed(old, "old_").join(
        _prefixed(new, "new_"), keys="old_path", right_keys="new_path", join_type="full outer", coalesce_keys=True
    )
    joined = joined.rename_columns(["path" if n == "old_path" else n for n in joined.column_names])
    was, now = pc.is_valid(joined["old_status"]), pc.is_valid(joined["new_status"])
    was_ok, now_ok = pc.equal(joined["old_status"], "ok"), pc.equal(joined["new_status"], "ok")
    file_changed = pc.is_null(joined["path"])  # all false, to start from
    for name in FILE_MARKS:
        file_changed = pc.or_(file_changed, _differs(joined["old_" + name], joined["new_" + name], nulls_agree=True))
    label_changed = _differs(joined["old_label"], joined["new_label"], nulls_agree=False)
    kind = pc.case_when(
        pc.make_struct(
            pc.invert(was),
            pc.invert(now),
            pc.and_(was_ok, pc.invert(now_ok)),
            pc.and_(pc.invert(was_ok), now_ok),
            pc.or_(file_changed, label_changed),
        ),
        *CASE_ORDER,
    )
    joined = joined.append_column("kind", kind).filter(pc.is_valid(kind))
    return joined.select(CHANGES_SCHEMA.names).cast(CHANGES_SCHEMA).sort_by("path")


def _prefixed(table: pa.Table, prefix: str) -> pa.Table:
    return table.rename_columns([prefix + name for name in table.column_names])


def _differs(old, new, nulls_agree: bool):
    """Where two columns differ. ``nulls_agree``: a null on either side is no difference (a mark one
    side lacks); otherwise a null and a value differ, two nulls do not (a label left null)."""
    differs = pc.not_equal(old, new)
    if nulls_agree:
        return pc.fill_null(differs, False)
    return pc.fill_null(differs, pc.xor(pc.is_null(old), pc.is_null(new)))


def previous_rows(output: Location) -> Iterable[pa.Table] | None:
    """The previous output's rows to compare with (``COMPARED``'s columns it has), checked as they pass;
    None when there is none, or it cannot be read (an empty file): then every path is new."""
    try:
        if not output.exists():
            return None
        names = read_schema(output).names
    except READ_ERRORS:
        return None
    columns = [name for name in COMPARED.names if name in names]
    return in_order(read_output(output, columns), str(output))


class ChangesWriter:
    """Writes the records of each step to an open Parquet writer or JSON-lines stream, counting them by kind."""

    def __init__(self, parquet: pq.ParquetWriter | None, stream) -> None:
        self.parquet, self.stream = parquet, stream
        self.counts = dict.fromkeys(CHANGE_KINDS, 0)

    def compare(self, new: Iterable[pa.Table], old: Iterable[pa.Table] | None) -> None:
        """Walk the rows being written (``new``) in step with the previous output's (``old``)."""
        for new_step, old_step in aligned([new, old if old is not None else iter(())]):
            self.write(change_records(old_step, new_step))

    def write(self, records: pa.Table) -> None:
        if not records.num_rows:
            return
        for item in pc.value_counts(records["kind"]).to_pylist():
            self.counts[item["values"]] += item["counts"]
        if self.parquet is not None:
            self.parquet.write_table(records)
            return
        lines = "".join(json.dumps(row, sort_keys=False) + "\n" for row in records.to_pylist())
        self.stream.write(lines.encode("utf-8"))


@contextlib.contextmanager
def open_changes(target: Location, file_format: str) -> Iterator[ChangesWriter]:
    """A ``ChangesWriter`` whose file replaces ``target`` only when the block ends without an error."""
    with target.atomic_write() as stream:
        if file_format == "parquet":
            with pq.ParquetWriter(stream, CHANGES_SCHEMA, compression="zstd") as parquet:
                yield ChangesWriter(parquet, None)
        else:
            yield ChangesWriter(None, stream)
