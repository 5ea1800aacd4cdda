"""`batchclf run` end to end: one row per image file, errors as rows, the documented schema."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image

import batchclf
from batchclf.machine import IN_PROCESS_MAX_CORES, available_cores
from batchclf.writer import output_schema, read_run_metadata


@pytest.fixture(scope="module")
def tree(tmp_path_factory, datasets):
    """Nested folders, awkward names, several modes and formats, and three broken files."""
    root = tmp_path_factory.mktemp("tree")
    source = datasets / "imagenet_objects"
    expected = {}

    def copy(name, target):
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, root / target)
        expected[target] = "ok"

    copy("pizza.jpg", "food/pizza one.jpg")
    copy("broccoli.jpg", "food/deeper/still deeper/BROCCOLI.JPG")
    copy("teddy1.jpg", "toys/ours en peluche é.jpeg")
    copy("toaster2.png", "kitchen/Toaster.PNG")
    save_image(root / "modes/alpha.png", mode="RGBA", color=(10, 200, 10, 128))
    save_image(root / "modes/gray.png", mode="L", color=128)
    save_image(root / "modes/日本.webp", color=(0, 0, 255))
    expected.update({"modes/alpha.png": "ok", "modes/gray.png": "ok", "modes/日本.webp": "ok"})
    good = (source / "canoe3.jpg").read_bytes()
    (root / "broken").mkdir()
    (root / "broken/truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "broken/empty.jpg").write_bytes(b"")
    (root / "broken/notes.jpg").write_text("this is text, not a picture\n")
    expected.update({"broken/truncated.jpg": "error", "broken/empty.jpg": "error", "broken/notes.jpg": "error"})
    (root / "README.txt").write_text("not an image extension: ignored")
    save_image(root / ".hidden/secret.jpg")  # hidden folders are skipped by default
    (root / "empty folder").mkdir()
    return root, expected


@pytest.fixture(scope="module")
def tree_run(tree, tmp_path_factory):
    root, _ = tree
    output = tmp_path_factory.mktemp("out") / "predictions.parquet"
    result = run_cli(
        "run",
        str(root),
        str(output),
        "--workers",
        "2",
        "--shard-size",
        "4",
        "--no-progress",
        "--dashboard-address",
        "127.0.0.1:0",  # off a terminal there is none unless asked for
    )
    return result, output


def test_tree_one_row_per_image_file(tree, tree_run):
    _, expected = tree
    result, output = tree_run
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert table.column("path").to_pylist() == sorted(expected)
    assert dict(zip(table.column("path").to_pylist(), table.column("status").to_pylist())) == expected


def test_tree_schema_and_metadata(tree, tree_run):
    root, _ = tree
    _, output = tree_run
    table = pq.read_table(output)
    assert table.schema.remove_metadata() == output_schema()
    metadata = read_run_metadata(output)
    assert metadata["model"] == "efficientnet-lite0"
    assert metadata["input_root"] == str(root.resolve())
    assert metadata["options"]["top_k"] == 5
    assert metadata["batchclf_version"] == batchclf.__version__
    assert not output.with_name(output.name + ".parts").exists()


def test_tree_rows_content(tree, tree_run):
    root, _ = tree
    _, output = tree_run
    rows = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    pizza = rows["food/pizza one.jpg"]
    assert pizza["label"] == "pizza" and 0.5 < pizza["score"] <= 1.0
    assert [t["label"] for t in pizza["topk"]][0] == "pizza" and len(pizza["topk"]) == 5
    scores = [t["score"] for t in pizza["topk"]]
    assert scores == sorted(scores, reverse=True)
    assert pizza["error"] is None and pizza["model"] == "efficientnet-lite0"
    assert (pizza["width"], pizza["height"]) == (640, 404)
    assert pizza["bytes"] == (root / "food/pizza one.jpg").stat().st_size
    assert pizza["mtime"].timestamp() == pytest.approx((root / "food/pizza one.jpg").stat().st_mtime, abs=1e-3)
    assert rows["food/deeper/still deeper/BROCCOLI.JPG"]["label"] == "broccoli"
    for broken in ("broken/truncated.jpg", "broken/empty.jpg", "broken/notes.jpg"):
        row = rows[broken]
        assert row["label"] is None and row["score"] is None and row["width"] is None
        assert row["error"]
    assert "empty" in rows["broken/empty.jpg"]["error"]
    assert "not a recognised image" in rows["broken/notes.jpg"]["error"]


def test_tree_summary_line(tree_run):
    result, _ = tree_run
    assert "10 files, 7 ok, 3 errors" in result.stderr
    assert "dashboard: http" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_in_process_worker_gives_the_rows_of_worker_processes(tree, tree_run, tmp_path):
    """The default run (on a small machine, one worker in the job's process running two shards at a time
    on one shared model) writes what two worker processes wrote."""
    root, _ = tree
    _, processes_output = tree_run
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = run_cli("run", str(root), str(output), "--shard-size", "4", "--no-progress", "--summary", str(summary))
    assert result.returncode == 0, result.stderr
    plan = json.loads(summary.read_text())["worker_plan"]
    assert plan["in_process"] == (available_cores() <= IN_PROCESS_MAX_CORES)
    in_process, processes = pq.read_table(output).to_pylist(), pq.read_table(processes_output).to_pylist()
    assert [row["path"] for row in in_process] == [row["path"] for row in processes]
    for ours, theirs in zip(in_process, processes):
        for row in (ours, theirs):
            del row["scored_at"]  # when each run scored it
            row["score"] = row["score"] and round(row["score"], 5)
            row["topk"] = row["topk"] and [(t["label"], round(t["score"], 5)) for t in row["topk"]]
        assert ours == theirs


def test_two_runs_identical_and_model_built_once_per_worker(tree, local_cluster, tmp_path):
    from batchclf.worker import model_build_count

    cluster, client = local_cluster
    root, _ = tree
    first = batchclf.classify(root, tmp_path / "a.parquet", scheduler=cluster.scheduler_address, shard_size=2)
    second = batchclf.classify(root, tmp_path / "b.parquet", scheduler=cluster.scheduler_address, shard_size=2)
    assert first.num_rows == 10
    assert first.drop_columns(["scored_at"]).equals(second.drop_columns(["scored_at"]))
    counts = client.run(model_build_count)
    assert sorted(counts.values()) == [1, 1], counts  # ten shards over two workers: one build each


def test_allow_deny_threshold(local_cluster, datasets, tmp_path):
    cluster, _ = local_cluster
    source = datasets / "imagenet_objects"
    allowed = batchclf.classify(source, scheduler=cluster.scheduler_address, allow=("toaster", "pizza"), top_k=3)
    for row in allowed.to_pylist():
        assert row["label"] in ("toaster", "pizza")
        assert [t["label"] for t in row["topk"]] in (["toaster", "pizza"], ["pizza", "toaster"])
    denied = batchclf.classify(source, scheduler=cluster.scheduler_address, deny=("pizza",))
    assert "pizza" not in denied.column("label").to_pylist()
    strict = batchclf.classify(source, scheduler=cluster.scheduler_address, threshold=0.9)
    for row in strict.to_pylist():
        assert row["status"] == "ok"
        assert (row["label"] is None) == (row["score"] < 0.9)
    assert None in strict.column("label").to_pylist()


def test_every_file_failing_exits_3(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.jpg").write_text("text")
    (tmp_path / "in/b.png").write_bytes(b"")
    output = tmp_path / "out.parquet"
    result = run_cli("run", str(tmp_path / "in"), str(output), "--workers", "1", "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "all 2 files failed" in result.stderr
    assert pq.read_table(output).column("status").to_pylist() == ["error", "error"]


def test_list_file_input(tmp_path, local_cluster, datasets):
    cluster, _ = local_cluster
    source = datasets / "imagenet_objects"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{source}/toaster.jpg\n\n# a comment\n{source}/pizza.jpg\n")
    table = batchclf.classify(listing, tmp_path / "out.parquet", scheduler=cluster.scheduler_address)
    assert table.column("path").to_pylist() == ["pizza.jpg", "toaster.jpg"]
    assert table.column("label").to_pylist() == ["pizza", "toaster"]
    assert read_run_metadata(tmp_path / "out.parquet")["input_root"] == str(source)
