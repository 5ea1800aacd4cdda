"""The reuse rule (``plan.plan_run``) on canned listings and sources: what is reused, scored, dropped."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchclf.discover import LISTING_SCHEMA, Listing
from batchclf.plan import plan_run


def listing(rows: list[tuple], unreadable=(), batch: int = 2) -> Listing:
    """(path, bytes, mtime[, readable]) rows, path-sorted, in batches of ``batch``."""
    full = [(*row, True) if len(row) == 3 else row for row in rows]
    tables = [
        pa.Table.from_pylist([dict(zip(LISTING_SCHEMA.names, r)) for r in full[i : i + batch]], LISTING_SCHEMA)
        for i in range(0, len(full), batch)
    ]
    return Listing(root="/images", batches=iter(tables), unreadable=list(unreadable), files=len(full))


def source(rows: list[tuple], batch: int = 2):
    """(path, bytes, mtime, status[, error]) rows as a reusable source."""
    full = [(*row, None) if len(row) == 4 else row for row in rows]
    records = [dict(zip(("path", "bytes", "mtime", "status", "error"), r)) for r in full]

    def read(columns):
        table = pa.Table.from_pylist(records)
        table = table.select([c for c in columns if c in table.column_names])
        for i in range(0, table.num_rows, batch):
            yield table.slice(i, batch)

    return read


def scored(plan) -> list[str]:
    return plan.to_score.to_pylist()


def test_without_sources_every_file_is_scored():
    plan = plan_run(listing([("a.jpg", 1, 1), ("b.jpg", 2, 2)]), [])
    assert scored(plan) == ["a.jpg", "b.jpg"] and plan.new == 2 and plan.reused == 0


def test_an_unchanged_file_is_reused_and_a_changed_one_scored():
    files = [("a.jpg", 1, 10), ("b.jpg", 2, 20), ("c.jpg", 3, 30)]
    previous = [("a.jpg", 1, 10, "ok"), ("b.jpg", 2, 21, "ok"), ("c.jpg", 4, 30, "ok")]
    plan = plan_run(listing(files), [source(previous)], first_is_output=True)
    assert scored(plan) == ["b.jpg", "c.jpg"]
    assert (plan.reused, plan.changed, plan.new) == (1, 2, 0)


def test_new_files_are_scored_and_gone_files_dropped():
    plan = plan_run(
        listing([("a.jpg", 1, 1), ("n.jpg", 5, 5)]), [source([("a.jpg", 1, 1, "ok"), ("z.jpg", 9, 9, "ok")])]
    )
    assert scored(plan) == ["n.jpg"]
    assert plan.dropped.to_pylist() == ["z.jpg"] and plan.new == 1


@pytest.mark.parametrize("keep_errors, expected", [(False, ["a.jpg"]), (True, [])])
def test_error_rows_are_scored_again_unless_kept(keep_errors, expected):
    plan = plan_run(
        listing([("a.jpg", 1, 1)]), [source([("a.jpg", 1, 1, "error", "cannot decode")])], False, keep_errors
    )
    assert scored(plan) == expected
    assert plan.retried == (0 if keep_errors else 1)
    assert plan.kept_errors == (["cannot decode"] if keep_errors else [])


def test_a_file_that_became_unreadable_is_scored_again():
    plan = plan_run(listing([("a.jpg", 1, 1, False)]), [source([("a.jpg", 1, 1, "ok")])])
    assert scored(plan) == ["a.jpg"]


def test_rows_under_an_unreadable_folder_are_kept_unverified_not_dropped():
    files = listing([("a.jpg", 1, 1)], unreadable=[("cam1/", "Permission denied")])
    plan = plan_run(files, [source([("a.jpg", 1, 1, "ok"), ("cam1/x.jpg", 2, 2, "ok"), ("cam2/y.jpg", 3, 3, "ok")])])
    assert plan.kept_unverified == 1
    assert plan.dropped.to_pylist() == ["cam2/y.jpg"]


def test_the_newest_source_wins():
    old = source([("a.jpg", 1, 1, "ok")])
    newer = source([("a.jpg", 1, 2, "ok")])  # a part of a later attempt, made after the file changed
    plan = plan_run(listing([("a.jpg", 1, 2)]), [old, newer])
    assert scored(plan) == [] and plan.resumed == 1


def test_the_walk_is_in_step_across_uneven_batches():
    files = [(f"{i:03}.jpg", i, i) for i in range(20)]
    previous = [(f"{i:03}.jpg", i, i, "ok") for i in range(0, 20, 2)]
    plan = plan_run(listing(files, batch=3), [source(previous, batch=4)], first_is_output=True)
    assert scored(plan) == [f"{i:03}.jpg" for i in range(1, 20, 2)]
    assert plan.reused == 10 and plan.new == 10


def marked_source(rows: list[tuple]):
    """(path, bytes, mtime, status, inode, ctime) rows."""
    records = [dict(zip(("path", "bytes", "mtime", "status", "inode", "ctime"), r)) for r in rows]

    def read(columns):
        table = pa.Table.from_pylist(records)
        yield table.select([c for c in columns if c in table.column_names])

    return read


@pytest.mark.parametrize(
    "now, before, reused",
    [
        ((7, 100), (7, 100), True),
        ((8, 100), (7, 100), False),  # replaced through a new file and a rename: rsync -a, tar x
        ((7, 101), (7, 100), False),  # rewritten in place, mtime set back: cp -p onto the file
        ((7, None), (7, 100), True),  # now several links (a snapshot tree): ctime no longer counts
        ((7, 100), (None, None), True),  # a row of an older output, made before these marks
    ],
)
def test_same_size_and_mtime_with_new_content_is_told_by_inode_or_ctime(now, before, reused):
    files = listing([("a.jpg", 1, 1, True, *now)])
    plan = plan_run(files, [marked_source([("a.jpg", 1, 1, "ok", *before)])])
    assert scored(plan) == ([] if reused else ["a.jpg"])
