"""``merge.in_order``: every stream walked in step is checked as it passes, so one out of order (or
damaged) is named and left out instead of silently losing or misplacing rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchclf.merge import UnusableSourceError, in_order


def tables(*batches):
    return [pa.table({"path": list(batch)}) for batch in batches]


def test_a_sorted_stream_passes_unchanged():
    stream = tables(["a", "b"], [], ["c", "d"])
    assert [t["path"].to_pylist() for t in in_order(stream, "s")] == [["a", "b"], ["c", "d"]]


@pytest.mark.parametrize(
    "batches",
    [(["b", "a"],), (["a", "c"], ["b"]), (["a", "a"],), (["a"], ["a"])],
    ids=["within a table", "across tables", "repeated within", "repeated across"],
)
def test_a_stream_out_of_order_is_refused_by_name(batches):
    with pytest.raises(UnusableSourceError, match="last night: its rows are not sorted by path"):
        list(in_order(tables(*batches), "last night"))


def test_a_read_error_names_the_source():
    def damaged():
        yield pa.table({"path": ["a"]})
        raise OSError("Couldn't deserialize thrift: invalid page header")

    with pytest.raises(UnusableSourceError, match="out.parquet: cannot be read .*thrift"):
        list(in_order(damaged(), "out.parquet"))


def test_a_row_without_a_path_is_refused():
    with pytest.raises(UnusableSourceError, match="without a path"):
        list(in_order([pa.table({"path": ["a", None]})], "s"))
