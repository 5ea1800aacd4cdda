"""Walking path-sorted streams in step and merging them, newest row winning (``merge.py``), on canned tables."""

from __future__ import annotations

import pyarrow as pa

from batchclf.merge import SOURCE_COLUMN, aligned, conform, newest_rows

SCHEMA = pa.schema([("path", pa.string()), ("value", pa.int64())])


def _table(paths, value) -> pa.Table:
    return pa.table({"path": paths, "value": [value] * len(paths)}, schema=SCHEMA)


def _merged(streams, **options) -> pa.Table:
    return pa.concat_tables(newest_rows(streams, SCHEMA, **options))


def _values(table: pa.Table) -> dict:
    return dict(zip(table["path"].to_pylist(), table["value"].to_pylist()))


def test_the_latest_stream_wins_for_a_path_in_several():
    oldest = [_table(["a", "b", "c", "d"], 0)]
    middle = [_table(["b", "c"], 1)]
    newest = [_table(["c", "d"], 2)]
    assert _values(_merged([oldest, middle, newest])) == {"a": 0, "b": 1, "c": 2, "d": 2}


def test_the_merge_is_sorted_and_has_one_row_a_path_across_uneven_batches():
    left = [_table(["a", "d"], 0), _table([], 0), _table(["f", "g", "k"], 0)]
    right = [_table(["b"], 1), _table(["c", "d", "e", "f"], 1), _table([], 1), _table(["z"], 1)]
    merged = _merged([left, right])
    assert merged["path"].to_pylist() == ["a", "b", "c", "d", "e", "f", "g", "k", "z"]
    assert _values(merged)["d"] == 1 and _values(merged)["f"] == 1 and _values(merged)["g"] == 0


def test_an_empty_stream_or_one_that_ends_early_drops_nothing_of_the_others():
    merged = _merged([[_table(["a", "c"], 0)], [], [_table(["b"], 2)]])
    assert merged["path"].to_pylist() == ["a", "b", "c"]


def test_with_source_says_which_stream_each_row_came_from():
    merged = _merged([[_table(["a", "b"], 0)], [_table(["b", "c"], 1)]], with_source=True)
    assert dict(zip(merged["path"].to_pylist(), merged[SOURCE_COLUMN].to_pylist())) == {"a": 0, "b": 1, "c": 1}


def test_one_stream_is_passed_through_conformed():
    wider = pa.table({"extra": [1, 2], "path": ["a", "b"], "value": pa.array([3, 4], pa.int32())})
    merged = _merged([[wider]], with_source=True)
    assert merged.column_names == ["path", "value", SOURCE_COLUMN]
    assert merged["value"].type == pa.int64() and merged[SOURCE_COLUMN].to_pylist() == [0, 0]


def test_conform_fills_missing_columns_with_nulls_and_drops_extra_ones():
    table = pa.table({"other": ["x"], "path": ["a"]})
    conformed = conform(table, SCHEMA)
    assert conformed.schema == SCHEMA
    assert conformed.to_pylist() == [{"path": "a", "value": None}]


def test_aligned_steps_hold_a_path_of_every_stream_in_the_same_step():
    left = [_table(["a", "b"], 0), _table(["c", "x"], 0)]
    right = [_table(["b", "c", "d"], 1), _table(["y"], 1)]
    steps = list(aligned([left, right]))
    for step in steps:
        paths = [set(piece["path"].to_pylist()) if piece is not None else set() for piece in step]
        for other in steps:
            if other is not step:
                others = {p for piece in other if piece is not None for p in piece["path"].to_pylist()}
                assert not (paths[0] | paths[1]) & others  # a path is in one step only
    assert [p for step in steps if step[0] is not None for p in step[0]["path"].to_pylist()] == ["a", "b", "c", "x"]


def test_an_exhausted_stream_gives_none_pieces():
    steps = list(aligned([[_table(["a", "b"], 0)], [], [_table([], 2)]]))
    assert steps and all(step[1] is None and step[2] is None for step in steps)
    assert [p for step in steps for p in step[0]["path"].to_pylist()] == ["a", "b"]
