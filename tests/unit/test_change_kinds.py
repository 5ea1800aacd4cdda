"""The kinds of change between last night's rows and tonight's (``changes.change_records``), and the
reason a full rescore gives (``plan.rescore_reason``): pure functions over canned rows and key parts."""

from __future__ import annotations

import pyarrow as pa

from batchclf.changes import CHANGES_SCHEMA, change_records
from batchclf.plan import GENERIC_REASON, rescore_reason


def _rows(*rows) -> pa.Table:
    names = ["path", "status", "label", "score", "error", "bytes"]
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})


def _kinds(old, new) -> dict[str, str]:
    table = change_records(old, new)
    assert table.schema.equals(CHANGES_SCHEMA)
    return dict(zip(table["path"].to_pylist(), table["kind"].to_pylist()))


OLD = _rows(
    ("same.jpg", "ok", "cat", 0.9, None, 10),
    ("gone.jpg", "ok", "dog", 0.8, None, 20),
    ("breaks.jpg", "ok", "cat", 0.7, None, 30),
    ("heals.jpg", "error", None, None, "truncated", 40),
    ("edited.jpg", "ok", "cat", 0.6, None, 50),
    ("relabelled.jpg", "ok", "cat", 0.6, None, 60),
    ("still-broken.jpg", "error", None, None, "truncated", 70),
)
NEW = _rows(
    ("added.jpg", "ok", "dog", 0.5, None, 5),
    ("same.jpg", "ok", "cat", 0.9, None, 10),
    ("breaks.jpg", "error", None, None, "not an image", 31),
    ("heals.jpg", "ok", "dog", 0.4, None, 41),
    ("edited.jpg", "ok", "cat", 0.7, None, 51),
    ("relabelled.jpg", "ok", "dog", 0.6, None, 60),
    ("still-broken.jpg", "error", None, None, "truncated", 70),
)


def test_each_kind_of_change_and_only_changes_are_listed():
    assert _kinds(OLD, NEW) == {
        "added.jpg": "new",
        "gone.jpg": "dropped",
        "breaks.jpg": "newly_failing",
        "heals.jpg": "recovered",
        "edited.jpg": "changed",  # a new file that keeps its label counts
        "relabelled.jpg": "changed",  # same file, another label (a rescore with another model)
    }


def test_old_and_new_label_score_and_error_are_recorded():
    rows = {row["path"]: row for row in change_records(OLD, NEW).to_pylist()}
    assert (rows["gone.jpg"]["old_label"], rows["gone.jpg"]["new_label"]) == ("dog", None)
    assert (rows["breaks.jpg"]["old_error"], rows["breaks.jpg"]["new_error"]) == (None, "not an image")
    assert rows["heals.jpg"]["new_label"] == "dog" and abs(rows["heals.jpg"]["new_score"] - 0.4) < 1e-6


def test_no_previous_output_makes_every_path_new_and_no_rows_drop_every_path():
    assert set(_kinds(None, NEW).values()) == {"new"} and len(_kinds(None, NEW)) == 7
    assert set(_kinds(OLD, None).values()) == {"dropped"}


def test_a_mark_only_one_side_has_is_no_change():
    """An older output has no inode: a row rescored now that has one is not a changed file for that."""
    old = _rows(("a.jpg", "ok", "cat", 0.9, None, 10))
    new = _rows(("a.jpg", "ok", "cat", 0.9, None, 10)).append_column("inode", pa.array([7], pa.int64()))
    assert _kinds(old, new) == {}


KEY = {
    "model": "efficientnet-lite0",
    "weights": "0.1.0",
    "labels": "abc",
    "options": {"backend": "auto", "top_k": 5, "threshold": 0.0, "allow": [], "deny": []},
    "input_root": "/a",
    "path_format": 2,
}


def _with(**changes) -> dict:
    options = {**KEY["options"], **changes.pop("options", {})}
    return {**KEY, **changes, "options": options}


def test_the_reason_names_the_part_that_differs():
    assert rescore_reason(KEY, _with(options={"top_k": 3})) == "top_k 5 → 3"
    assert rescore_reason(KEY, _with(input_root="/b")) == "input root /a → /b"
    assert rescore_reason(KEY, _with(options={"allow": ["cat", "dog"]})) == "allow none → cat,dog"
    assert rescore_reason(KEY, _with(weights="0.2.0")) == "weights 0.1.0 → 0.2.0"


def test_another_model_is_named_without_its_weights():
    reason = rescore_reason(KEY, _with(model="mine.keras@12ab", weights=None, labels="def"))
    assert reason == "model efficientnet-lite0 → mine.keras@12ab, class names differ"


def test_several_differences_are_all_named():
    reason = rescore_reason(KEY, _with(input_root="/b", options={"top_k": 3, "threshold": 0.5}))
    assert reason == "input root /a → /b, threshold 0.0 → 0.5, top_k 5 → 3"


def test_a_new_path_format_names_the_batchclf_versions():
    reason = rescore_reason({**KEY, "path_format": 1}, KEY, ("0.0.9", "0.1.0"))
    assert reason == "batchclf 0.0.9 → 0.1.0 (path format 1 → 2)"


def test_an_output_that_recorded_only_the_digest_gets_the_generic_reason():
    assert rescore_reason(None, KEY) == GENERIC_REASON
    assert rescore_reason(KEY, KEY) == GENERIC_REASON  # the digests differ, yet no part does: say no more
