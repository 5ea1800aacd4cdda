"""Production runs: resume after SIGKILL, incremental nightly runs, the output lock, --summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from summary_check import valid_summary

from batchclf.errors import EXIT_LOCKED
from batchclf.store import location

SHARD_SIZE = "16"


def _plain(path):
    """The rows, without the file metadata (which records the run) and scored_at (when each row was scored)."""
    return pq.read_table(path).drop_columns(["scored_at"]).replace_schema_metadata(None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, datasets):
    """A few hundred images: hard links to the shared ones under varied names and folders."""
    root = tmp_path_factory.mktemp("corpus")
    sources = sorted((datasets / "imagenet_objects").glob("*.jpg")) + sorted(
        (datasets / "food_toy_appliance").glob("*.jpg")
    )
    for copy in range(10):
        folder = root / f"batch{copy:02d}"
        folder.mkdir()
        for source in sources:
            target = folder / f"{source.parent.name}-{source.name}"
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copy(source, target)
    return root


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "out.parquet"
    result = run_cli("run", str(corpus), str(output), "--shard-size", SHARD_SIZE, "--no-progress")
    assert result.returncode == 0, result.stderr
    return output


def _count_parts(parts_folder) -> int:
    try:
        return sum(1 for name in os.listdir(parts_folder) if name.startswith("attempt-") and name.endswith(".parquet"))
    except FileNotFoundError:
        return -1


@pytest.mark.parametrize("kill_after_parts", [0, 1, 12], ids=["before-first-shard", "after-one-shard", "most-shards"])
def test_sigkill_then_rerun_equals_uninterrupted(corpus, reference, tmp_path, kill_after_parts):
    output = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    command = [
        sys.executable,
        "-m",
        "batchclf",
        "run",
        str(corpus),
        str(output),
        "--shard-size",
        SHARD_SIZE,
        "--no-progress",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while _count_parts(parts) < kill_after_parts or not (parts / "run.json").exists():
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not output.exists()
    done_before = _count_parts(parts)
    assert done_before >= kill_after_parts
    rows_before = sum(pq.read_metadata(parts / n).num_rows for n in os.listdir(parts) if n.startswith("attempt-"))

    result = run_cli("run", str(corpus), str(output), "--shard-size", SHARD_SIZE, "--no-progress")
    assert result.returncode == 0, result.stderr
    if done_before:
        assert f"resuming: {rows_before} rows reused" in result.stderr
    assert _plain(output).equals(_plain(reference))
    assert not parts.exists()


def test_changed_command_does_not_reuse_parts(corpus, tmp_path):
    output = tmp_path / "out.parquet"
    first = run_cli(
        "run",
        str(corpus),
        str(output),
        "--shard-size",
        SHARD_SIZE,
        "--keep-parts",
        "--no-progress",
        "--include",
        "batch00/*",
    )
    assert first.returncode == 0, first.stderr
    second = run_cli(
        "run",
        str(corpus),
        str(output),
        "--shard-size",
        SHARD_SIZE,
        "--top-k",
        "2",
        "--no-progress",
        "--include",
        "batch00/*",
    )
    assert second.returncode == 0, second.stderr
    assert "not reusing" in second.stderr and "another model, options or input" in second.stderr
    assert "resuming" not in second.stderr
    assert {len(t) for t in pq.read_table(output).column("topk").to_pylist()} == {2}


def test_incremental_scores_only_new_and_changed(datasets, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(datasets / "imagenet_objects", images, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    output = tmp_path / "out.parquet"
    summary = tmp_path / "summary.json"
    first = run_cli("run", str(images), str(output), "--incremental", "--no-progress", "--summary", str(summary))
    assert first.returncode == 0, first.stderr
    assert json.loads(summary.read_text())["incremental"]["scored"] == 19

    # Night two: one file added, two changed (one in place, one replaced by another picture), two deleted.
    shutil.copy(datasets / "food_toy_appliance" / "teddy2.jpg", images / "new_teddy.jpg")
    with open(images / "pizza.jpg", "ab") as stream:
        stream.write(b"\0")  # same picture, new size and mtime
    shutil.copy(datasets / "imagenet_objects" / "toaster.jpg", images / "canoe2.jpg")
    (images / "broccoli.png").unlink()
    (images / "coffeepot3.jpg").unlink()

    second = run_cli("run", str(images), str(output), "--incremental", "--no-progress", "--summary", str(summary))
    assert second.returncode == 0, second.stderr
    counts = json.loads(summary.read_text())["incremental"]
    assert (counts["reused"], counts["scored"], counts["new"], counts["changed"], counts["dropped"]) == (15, 3, 1, 2, 2)
    assert "15 unchanged rows reused, 3 to score (1 new, 2 changed, 0 errors retried), 2 dropped" in second.stderr

    full = tmp_path / "full.parquet"
    assert run_cli("run", str(images), str(full), "--no-progress").returncode == 0
    assert _plain(output).equals(_plain(full))
    assert dict(zip(*pq.read_table(output, columns=["path", "label"]).to_pydict().values()))["canoe2.jpg"] == "toaster"

    third = run_cli("run", str(images), str(output), "--incremental", "--no-progress")
    assert third.returncode == 0 and "18 unchanged rows reused, 0 to score" in third.stderr
    assert "dashboard" not in third.stderr  # nothing changed: no cluster started
    assert _plain(output).equals(_plain(full))


def test_incremental_with_other_options_rescores(datasets, tmp_path):
    images = datasets / "food_toy_appliance"
    output = tmp_path / "out.parquet"
    assert run_cli("run", str(images), str(output), "--incremental", "--no-progress").returncode == 0
    again = run_cli("run", str(images), str(output), "--incremental", "--top-k", "3", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "incremental: scoring everything (top_k 5 → 3)" in again.stderr


def test_incremental_hash_ignores_touch_but_sees_content(datasets, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(datasets / "food_toy_appliance", images, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    output = tmp_path / "out.parquet"
    assert run_cli("run", str(images), str(output), "--incremental", "--hash", "--no-progress").returncode == 0
    assert pq.read_table(output).column("content_hash").null_count == 0
    os.utime(images / "pizza.jpg", (1, 1))  # touched, same content
    shutil.copy(images / "toaster.jpg", images / "broccoli.jpg")  # new content
    again = run_cli("run", str(images), str(output), "--incremental", "--hash", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "11 unchanged rows reused, 1 to score (0 new, 1 changed, 0 errors retried), 0 dropped" in again.stderr


def test_lock_refuses_second_run_then_wait_queues(datasets, tmp_path):
    output = tmp_path / "out.parquet"
    images = datasets / "food_toy_appliance"
    with location(output).lock():
        refused = run_cli("run", str(images), str(output), "--no-progress")
        assert refused.returncode == EXIT_LOCKED == 4
        assert f"pid {os.getpid()}" in refused.stderr and "--wait" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not output.exists()
        waiting = subprocess.Popen(
            [sys.executable, "-m", "batchclf", "run", str(images), str(output), "--wait", "--no-progress"],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert waiting.poll() is None  # still queued behind the lock
    assert waiting.wait(timeout=300) == 0, waiting.stderr.read()
    assert pq.read_table(output).num_rows == 12


def test_summary_file(datasets, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(datasets / "food_toy_appliance", images, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    (images / "broken.jpg").write_text("not an image")
    (images / "empty.png").write_bytes(b"")
    summary = tmp_path / "s.json"
    result = run_cli("run", str(images), str(tmp_path / "o.parquet"), "--summary", str(summary), "--no-progress")
    assert result.returncode == 0, result.stderr
    record = valid_summary(summary)
    assert (record["status"], record["exit_code"], record["files"], record["ok"], record["errors"]) == (
        "ok",
        0,
        14,
        12,
        2,
    )
    assert record["errors_by_kind"] == {"empty file": 1, "not a recognised image format": 1}
    assert record["images_per_second"] > 0 and record["task_seconds"]["inference"] > 0
    stages = record["stage_seconds"]
    assert stages["scoring"] > 0 and stages["merging"] > 0
    assert sum(stages.values()) <= record["seconds"] + 0.01  # wall times of the stages, within the run's
    assert record["started"] < record["ended"] and record["output"] == str(tmp_path / "o.parquet")
    assert {"batchclf", "pyarrow", "dask", "tensorflow"} <= set(record["versions"])
    failed = run_cli("run", str(tmp_path / "missing"), str(tmp_path / "o.parquet"), "--summary", str(summary))
    assert failed.returncode == 2
    assert valid_summary(summary)["status"] == "failed"
