"""The reuse rule (``plan.plan_run``) on a canned listing and canned earlier rows: what is reused, what is
scored, which rows are dropped because their file is gone, and which are kept under an unreadable folder."""

from __future__ import annotations

import pyarrow as pa

from batchclf.discover import LISTING_SCHEMA, Listing
from batchclf.plan import SIGNATURE_SCHEMA, plan_run


def _listing(rows, unreadable=(), batch_rows=2) -> Listing:
    """``rows``: (path, bytes, mtime, readable), sorted; handed on in small batches, as the walk does."""
    table = pa.Table.from_pylist([dict(zip(LISTING_SCHEMA.names, row)) for row in rows], schema=LISTING_SCHEMA)
    batches = [pa.Table.from_batches([batch]) for batch in table.to_batches(batch_rows)]
    return Listing(root="/images", batches=iter(batches), unreadable=list(unreadable), files=len(rows))


def _source(rows):
    """Earlier rows: (path, bytes, mtime, status, error), sorted."""
    names = [name for name in SIGNATURE_SCHEMA.names if name != "content_hash"]
    table = pa.Table.from_pylist([dict(zip(names, row)) for row in rows])
    return lambda columns: [table.slice(0, 1), table.slice(1)]


OK = ("ok", None)


def test_unchanged_files_are_reused_and_the_rest_scored_in_output_order():
    listing = _listing(
        [
            ("a.jpg", 10, 100, True),  # unchanged
            ("b.jpg", 11, 100, True),  # new
            ("c.jpg", 12, 999, True),  # changed mtime
            ("d.jpg", 99, 100, True),  # changed size
            ("e.jpg", 14, 100, False),  # unchanged but now unreadable: scored, so its row says so
        ]
    )
    source = _source(
        [("a.jpg", 10, 100, *OK), ("c.jpg", 12, 100, *OK), ("d.jpg", 13, 100, *OK), ("e.jpg", 14, 100, *OK)]
    )
    plan = plan_run(listing, [source], first_is_output=True)
    assert plan.to_score.to_pylist() == ["b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert (plan.reused, plan.new, plan.changed, plan.files) == (1, 1, 3, 5)
    assert plan.dropped.to_pylist() == []


def test_rows_of_files_that_are_gone_are_dropped():
    listing = _listing([("a.jpg", 10, 100, True), ("c.jpg", 12, 100, True)])
    source = _source([("a.jpg", 10, 100, *OK), ("b.jpg", 11, 100, *OK), ("c.jpg", 12, 100, *OK), ("z.jpg", 1, 1, *OK)])
    plan = plan_run(listing, [source])
    assert plan.dropped.to_pylist() == ["b.jpg", "z.jpg"]
    assert plan.to_score.to_pylist() == [] and plan.resumed == 2


def test_rows_under_a_folder_that_could_not_be_listed_are_kept_not_dropped():
    listing = _listing([("a.jpg", 10, 100, True)], unreadable=[("locked/", "Permission denied")])
    source = _source([("a.jpg", 10, 100, *OK), ("locked/x.jpg", 5, 5, *OK), ("lockedness.jpg", 5, 5, *OK)])
    plan = plan_run(listing, [source])
    assert plan.kept_unverified == 1
    assert plan.dropped.to_pylist() == ["lockedness.jpg"]  # beside the folder, not in it
    assert plan.unreadable == [("locked/", "Permission denied")]


def test_error_rows_are_scored_again_unless_kept():
    listing = _listing([("a.jpg", 10, 100, True), ("b.jpg", 11, 100, True)])
    rows = [("a.jpg", 10, 100, "error", "truncated file"), ("b.jpg", 11, 100, *OK)]
    retried = plan_run(listing, [_source(rows)])
    assert retried.to_score.to_pylist() == ["a.jpg"] and retried.retried == 1
    listing = _listing([("a.jpg", 10, 100, True), ("b.jpg", 11, 100, True)])
    kept = plan_run(listing, [_source(rows)], keep_error_rows=True)
    assert kept.to_score.to_pylist() == [] and kept.kept_errors == ["truncated file"]


def test_the_newest_source_decides_and_output_rows_count_apart_from_parts():
    """Last night's output first, then the parts of a killed attempt: a part's row is newer."""
    listing = _listing([("a.jpg", 10, 200, True), ("b.jpg", 11, 100, True)])
    output = _source([("a.jpg", 10, 100, *OK), ("b.jpg", 11, 100, *OK)])
    part = _source([("a.jpg", 10, 200, *OK)])  # a.jpg changed last night and was scored before the kill
    plan = plan_run(listing, [output, part], first_is_output=True)
    assert plan.to_score.to_pylist() == []
    assert (plan.reused, plan.resumed) == (1, 1)


def test_nothing_to_reuse_scores_every_listed_file():
    listing = _listing([("a.jpg", 1, 1, True), ("b.jpg", 2, 2, True), ("c.jpg", 3, 3, True)])
    plan = plan_run(listing, [])
    assert plan.to_score.to_pylist() == ["a.jpg", "b.jpg", "c.jpg"] and plan.new == 3
