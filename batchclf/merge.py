"""Streams of rows sorted by ``path``: walk several in step, and merge them, newest row winning.

The listing, last night's output and every part file are sorted by path text. Walking them in
step, one bounded batch at a time, lets a nightly run compare and merge ten million rows while
holding only a few batches: no table is ever read whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

SOURCE_COLUMN = "__source"
READ_ERRORS = (OSError, ValueError, pa.ArrowException)  # what a damaged Parquet file raises while it is read


class UnusableSourceError(Exception):
    """A source of rows that cannot be used: damaged, or not sorted by path (rewritten by another tool).

    Its rows cannot be trusted to be complete or to align with the listing, so the run drops the
    source and scores its files again rather than lose or misplace a row.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def in_order(stream: Iterable[pa.Table], name: str) -> Iterator[pa.Table]:
    """``stream``'s tables, checked as they pass: paths strictly increasing within and across tables.

    A read error or a path out of order raises ``UnusableSourceError`` naming the source: every
    stage that walks streams in step relies on this order, and a stream out of order would make it
    drop or duplicate rows without a word.
    """
    last = None
    iterator = iter(stream)
    while True:
        try:
            table = next(iterator, None)
        except READ_ERRORS as error:
            raise UnusableSourceError(name, f"cannot be read ({type(error).__name__}: {error})") from None
        if table is None:
            return
        if not table.num_rows:
            continue
        paths = table["path"]
        if paths.null_count:
            raise UnusableSourceError(name, "it has rows without a path")
        first = paths[0].as_py()
        ordered = pc.all(pc.less(paths.slice(0, len(paths) - 1), paths.slice(1))).as_py() is not False
        if not ordered or (last is not None and not last < first):
            raise UnusableSourceError(name, "its rows are not sorted by path (was it rewritten by another tool?)")
        last = paths[-1].as_py()
        yield table


def _rows_up_to(table: pa.Table, bound: str) -> int:
    """How many leading rows of a path-sorted table have ``path <= bound``."""
    return pc.sum(pc.less_equal(table["path"], bound).cast(pa.int8())).as_py() or 0


def aligned(streams: list[Iterable[pa.Table]]) -> Iterator[list[pa.Table]]:
    """Yield one piece per stream, all covering the same range of paths, in order.

    Each stream yields path-sorted tables; a path present in several streams lands in the same
    step, so a step can be joined on its own. Each step is at most one batch per stream.
    """
    iterators = [iter(s) for s in streams]
    buffers: list[pa.Table | None] = [None] * len(iterators)

    def refill(i: int) -> None:
        """The next non-empty batch of stream ``i``, or None once the stream is exhausted."""
        while buffers[i] is None or buffers[i].num_rows == 0:
            batch = next(iterators[i], None) if iterators[i] is not None else None
            if batch is None:
                buffers[i] = None
                iterators[i] = None
                return
            buffers[i] = batch

    for i in range(len(iterators)):
        refill(i)
    while any(b is not None for b in buffers):
        bound = min(b["path"][-1].as_py() for b in buffers if b is not None)
        step = []
        for i, buffer in enumerate(buffers):
            if buffer is None:
                step.append(None)
                continue
            count = _rows_up_to(buffer, bound)
            step.append(buffer.slice(0, count))
            buffers[i] = buffer.slice(count)
            if buffers[i].num_rows == 0:
                refill(i)
        yield step


def newest_rows(streams: list[Iterable[pa.Table]], schema: pa.Schema, with_source: bool = False) -> Iterator[pa.Table]:
    """Merge path-sorted streams into one, keeping for each path the row of the latest stream.

    Streams are given oldest first (last night's output, then the parts of each attempt in turn),
    and every table is conformed to ``schema`` first. ``with_source`` adds the ``SOURCE_COLUMN``:
    the index of the stream each row came from.
    """
    if len(streams) == 1:
        for table in streams[0]:
            table = conform(table, schema)
            if with_source:
                table = table.append_column(SOURCE_COLUMN, pa.repeat(pa.scalar(0, pa.int32()), table.num_rows))
            yield table
        return
    for step in aligned(streams):
        pieces = [
            conform(piece, schema).append_column(SOURCE_COLUMN, pa.repeat(pa.scalar(i, pa.int32()), piece.num_rows))
            for i, piece in enumerate(step)
            if piece is not None and piece.num_rows
        ]
        if not pieces:
            continue
        table = pa.concat_tables(pieces)
        if len(pieces) > 1:
            table = table.sort_by([("path", "ascending"), (SOURCE_COLUMN, "descending")])
            paths = table["path"]
            repeated = pc.equal(paths.slice(1), paths.slice(0, len(paths) - 1))
            keep = pa.concat_arrays([pa.array([True]), pc.invert(repeated).combine_chunks()])
            table = table.filter(keep)
        yield table if with_source else table.drop_columns([SOURCE_COLUMN])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order: missing ones are null, extra ones dropped."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())
