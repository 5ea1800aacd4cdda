"""A nightly run left alone: a special file under an image name never hangs it (with --hash either), and
a tree that lost most of its files is refused instead of emptying last night's output."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image

ARGS = ("--no-progress", "--dashboard-address", "127.0.0.1:0")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    for folder in ("cam0", "cam1", "cam2"):
        for index in range(3):
            save_image(root / folder / f"{index}.jpg", color=(40 * index, 90, 200))
    return root


@pytest.mark.slow
def test_special_files_under_image_names_are_error_rows_and_hash_runs_finish(tree, tmp_path):
    os.mkfifo(tree / "cam0" / "pipe.jpg")
    (tree / "cam0" / "zero.jpg").symlink_to("/dev/zero")
    output = tmp_path / "out.parquet"
    for _night in range(2):  # the second night hashes every listed file to compare it
        result = run_cli("run", str(tree), str(output), "--hash", "--incremental", *ARGS, timeout=300)
        assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in pq.read_table(output).to_pylist()}
    assert rows["cam0/pipe.jpg"]["error"] == "not a regular file: a FIFO (named pipe)"
    assert rows["cam0/zero.jpg"]["error"] == "not a regular file: a character device"
    assert sum(r["status"] == "ok" for r in rows.values()) == 9


@pytest.mark.slow
def test_a_mass_drop_is_refused_and_last_nights_output_kept(tree, tmp_path):
    output = tmp_path / "out.parquet"
    assert run_cli("run", str(tree), str(output), "--incremental", *ARGS).returncode == 0
    before = output.read_bytes()
    for folder in ("cam1", "cam2"):  # an unmounted share: two of three folders gone
        for image in (tree / folder).iterdir():
            image.unlink()
    result = run_cli("run", str(tree), str(output), "--incremental", *ARGS)
    assert result.returncode == 6, result.stderr
    assert "would drop 6 of the 9 rows" in result.stderr and "--max-drop 1" in result.stderr
    assert output.read_bytes() == before
    accepted = run_cli("run", str(tree), str(output), "--incremental", "--max-drop", "1", *ARGS)
    assert accepted.returncode == 0, accepted.stderr
    assert pq.read_table(output).num_rows == 3


def test_the_python_api_takes_what_the_command_line_takes(tree, tmp_path):
    from batchclf import classify
    from batchclf.errors import UsageError

    with pytest.raises(UsageError, match="--storage-options must be a JSON object"):
        classify(tree, storage_options="{not json")
    with pytest.raises(UsageError, match="top_k must be a whole number, got '3'"):
        classify(tree, top_k="3")
