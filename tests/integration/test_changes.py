"""Nightly runs with --changes: the changes file names exactly the paths that were added, changed,
deleted, broken and fixed; scored_at and the run id say which rows tonight's run scored; a full rescore
says why; every summary validates against docs/summary.schema.json."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from summary_check import valid_summary

GARBAGE = b"this is not an image\n" * 10


def _night(images, output, changes, summary, *options):
    result = run_cli("run", str(images), str(output), "--changes", str(changes), "--summary", str(summary),
                     "--no-progress", "--dashboard-address", "127.0.0.1:0", *options)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result, valid_summary(summary)


def _changes(path) -> dict[str, dict]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        rows = pq.read_table(path).to_pylist()
    assert [row["path"] for row in rows] == sorted(row["path"] for row in rows)
    return {row["path"]: row for row in rows}


def _kinds(path) -> dict[str, str]:
    return {name: row["kind"] for name, row in _changes(path).items()}


def _scored_at(output) -> dict[str, datetime | None]:
    table = pq.read_table(output, columns=["path", "scored_at"])
    return dict(zip(table["path"].to_pylist(), table["scored_at"].to_pylist()))


def _counts(record) -> dict:
    return {kind: count for kind, count in record["changes"].items() if kind != "file" and count}


@pytest.fixture
def images(tmp_path, datasets):
    folder = tmp_path / "images"
    shutil.copytree(datasets / "food_toy_appliance", folder, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    (folder / "broken.jpg").write_bytes(GARBAGE)
    return folder


def test_three_nights_name_every_change(images, datasets, tmp_path):
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    source = datasets / "food_toy_appliance"

    # Night 1: a full run (no --incremental, no previous output): every path is new.
    first, record = _night(images, output, tmp_path / "night1.parquet", summary)
    assert (
        set(_kinds(tmp_path / "night1.parquet").values()) == {"new"} and len(_kinds(tmp_path / "night1.parquet")) == 13
    )
    assert _counts(record) == {"new": 13}
    assert record["changes"]["file"] == str(tmp_path / "night1.parquet")
    assert "changes: 13 new, 0 changed, 0 dropped, 0 newly failing, 0 recovered" in first.stderr
    night1 = _scored_at(output)
    assert None not in night1.values()
    metadata = json.loads(pq.read_schema(output).metadata[b"batchclf"])
    assert metadata["run_id"] == record["run_id"]

    # Night 2: one added, one changed (another picture), one deleted, one broken, one fixed.
    shutil.copy(source / "teddy2.jpg", images / "added.jpg")
    shutil.copy(source / "toaster.jpg", images / "pizza.jpg")
    (images / "broccoli2.jpg").unlink()
    (images / "teddy3.jpg").write_bytes(GARBAGE)
    shutil.copy(source / "broccoli.jpg", images / "broken.jpg")
    second, record = _night(images, output, tmp_path / "night2.parquet", summary, "--incremental")
    changes = _changes(tmp_path / "night2.parquet")
    assert {name: row["kind"] for name, row in changes.items()} == {
        "added.jpg": "new",
        "pizza.jpg": "changed",
        "broccoli2.jpg": "dropped",
        "teddy3.jpg": "newly_failing",
        "broken.jpg": "recovered",
    }
    assert (changes["pizza.jpg"]["old_label"], changes["pizza.jpg"]["new_label"]) == ("pizza", "toaster")
    assert changes["broccoli2.jpg"]["old_label"] == "broccoli" and changes["broccoli2.jpg"]["new_label"] is None
    assert changes["teddy3.jpg"]["old_error"] is None and "not a recognised image" in changes["teddy3.jpg"]["new_error"]
    assert changes["broken.jpg"]["old_error"] and changes["broken.jpg"]["new_label"] == "broccoli"
    assert _counts(record) == {"new": 1, "changed": 1, "dropped": 1, "newly_failing": 1, "recovered": 1}
    assert record["rescore_reason"] is None and record["incremental"]["reused"] == 9

    # scored_at: reused rows keep last night's; rescored rows are tonight's, and the file names tonight's run.
    night2 = _scored_at(output)
    rescored = {"added.jpg", "pizza.jpg", "teddy3.jpg", "broken.jpg"}
    assert {name for name, when in night2.items() if when != night1.get(name)} == rescored
    tonight = datetime.fromisoformat(record["started"].replace("Z", "+00:00"))
    assert all(night2[name] >= tonight for name in rescored)
    assert json.loads(pq.read_schema(output).metadata[b"batchclf"])["run_id"] == record["run_id"]

    # Night 3, as JSON lines: the broken one fixed, the added one deleted, another added, another changed.
    shutil.copy(source / "teddy3.jpg", images / "teddy3.jpg")
    (images / "added.jpg").unlink()
    shutil.copy(source / "pizza2.jpg", images / "added-too.jpg")
    shutil.copy(source / "broccoli.jpg", images / "toaster.jpg")
    _, record = _night(images, output, tmp_path / "night3.jsonl", summary, "--incremental")
    changes = _changes(tmp_path / "night3.jsonl")
    assert {name: row["kind"] for name, row in changes.items()} == {
        "teddy3.jpg": "recovered",
        "added.jpg": "dropped",
        "added-too.jpg": "new",
        "toaster.jpg": "changed",
    }
    assert (changes["toaster.jpg"]["old_label"], changes["toaster.jpg"]["new_label"]) == ("toaster", "broccoli")
    assert _counts(record) == {"new": 1, "changed": 1, "dropped": 1, "recovered": 1}

    # An output written before scored_at existed is still reused: its rows keep no scoring time.
    table = pq.read_table(output)
    pq.write_table(table.drop_columns(["scored_at"]).replace_schema_metadata(table.schema.metadata), output)
    again, record = _night(images, output, tmp_path / "night3b.jsonl", summary, "--incremental")
    assert "13 unchanged rows reused, 0 to score" in again.stderr
    assert set(_scored_at(output).values()) == {None}
    assert (tmp_path / "night3b.jsonl").read_text() == "" and _counts(record) == {}


def test_a_full_rescore_names_its_reason(images, tmp_path):
    import keras

    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    (images / "broken.jpg").unlink()
    _night(images, output, tmp_path / "first.parquet", summary, "--incremental")

    topk, record = _night(images, output, tmp_path / "topk.jsonl", summary, "--incremental", "--top-k", "3")
    assert "incremental: scoring everything (top_k 5 → 3)" in topk.stderr
    assert record["rescore_reason"] == "top_k 5 → 3" and record["incremental"]["scored"] == 12
    assert _kinds(tmp_path / "topk.jsonl") == {}  # same files, same labels: nothing changed

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "tiny.keras")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    model, record = _night(images, output, tmp_path / "model.parquet", summary, "--incremental", "--top-k", "3",
                           "--model", str(tmp_path / "tiny.keras"))  # fmt: skip
    assert "incremental: scoring everything (model efficientnet-lite0 → tiny.keras@" in model.stderr
    assert record["rescore_reason"].startswith("model efficientnet-lite0 → tiny.keras@")
    changes = _changes(tmp_path / "model.parquet")
    assert len(changes) == 12 and {row["kind"] for row in changes.values()} == {"changed"}
    assert {row["new_label"] for row in changes.values()} <= {"cat", "dog"}


def test_summaries_of_failed_runs_validate(tmp_path, images):
    summary = tmp_path / "summary.json"
    usage = run_cli("run", str(images), str(tmp_path / "out.parquet"), "--top-k", "0", "--summary", str(summary))
    assert usage.returncode == 2
    record = valid_summary(summary)
    assert record["status"] == "failed" and record["stage_seconds"]["scoring"] == 0

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.jpg").write_bytes(GARBAGE)
    failed = run_cli("run", str(garbage), str(tmp_path / "out.parquet"), "--summary", str(summary), "--no-progress")
    assert failed.returncode not in (0, 2), failed.stderr
    record = valid_summary(summary)
    assert (record["status"], record["errors"], record["files"]) == ("failed", 1, 1)


def test_changes_names_are_checked_before_any_work(images, tmp_path):
    output = tmp_path / "out.parquet"
    for changes, message in [
        (tmp_path / "changes.csv", "name it .parquet, or .jsonl"),
        (tmp_path / "missing" / "changes.jsonl", "--changes folder"),
        (output, "is the output itself"),
    ]:
        result = run_cli("run", str(images), str(output), "--changes", str(changes))
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
        assert not output.exists()


def test_the_changes_schema_is_written_even_when_nothing_changed(tmp_path):
    """An empty Parquet changes file still has its columns (a reader's query works on a quiet night)."""
    from batchclf.changes import CHANGES_SCHEMA, open_changes
    from batchclf.store import location

    with open_changes(location(tmp_path / "c.parquet"), "parquet"):
        pass
    assert pq.read_schema(tmp_path / "c.parquet").equals(CHANGES_SCHEMA)
