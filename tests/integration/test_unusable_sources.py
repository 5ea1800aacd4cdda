"""Last night's output or an earlier run's part that cannot be used (a damaged page with the footer
intact, rows rewritten in another order) is left out with one line, and its files are scored again:
the output equals a clean full run, row for row, and no row is lost."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image

ARGS = ("--no-progress", "--dashboard-address", "127.0.0.1:0", "--shard-size", "4")
COMPARED = ["path", "label", "score", "status", "error", "width", "height", "bytes"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("unusable") / "images"
    for index in range(20):
        save_image(root / f"d{index % 3}" / f"{index:02}.png", color=(12 * index, 255 - 9 * index, 90))
    return root


@pytest.fixture(scope="module")
def clean(tree, tmp_path_factory):
    output = tmp_path_factory.mktemp("clean") / "out.parquet"
    assert run_cli("run", str(tree), str(output), *ARGS).returncode == 0
    return pq.read_table(output).select(COMPARED)


def _run(tree, output):
    return run_cli("run", str(tree), str(output), "--incremental", *ARGS)


def _corrupt_the_path_column(path):
    """Overwrite the middle of the first column chunk's pages: the footer stays intact."""
    column = pq.read_metadata(path).row_group(0).column(0)
    start = column.data_page_offset + column.total_compressed_size // 3
    with open(path, "r+b") as stream:
        stream.seek(start)
        stream.write(b"\xff" * max(8, column.total_compressed_size // 3))


@pytest.mark.slow
def test_a_damaged_previous_output_is_left_out_and_its_files_scored_again(tree, clean, tmp_path):
    output = tmp_path / "out.parquet"
    assert _run(tree, output).returncode == 0
    _corrupt_the_path_column(output)
    result = _run(tree, output)
    assert result.returncode == 0, result.stderr
    assert f"cannot use {output}: cannot be read" in result.stderr
    assert "scoring its files again" in result.stderr
    assert pq.read_table(output).select(COMPARED).equals(clean)


@pytest.mark.slow
def test_a_previous_output_sorted_by_another_column_loses_no_row(tree, clean, tmp_path):
    output = tmp_path / "out.parquet"
    assert _run(tree, output).returncode == 0
    table = pq.read_table(output)
    pq.write_table(table.take(pc.sort_indices(table, [("score", "descending")])), output)  # metadata kept
    result = _run(tree, output)
    assert result.returncode == 0, result.stderr
    assert "its rows are not sorted by path" in result.stderr
    assert pq.read_table(output).select(COMPARED).equals(clean)


@pytest.mark.slow
def test_a_damaged_part_on_resume_is_left_out(tree, clean, tmp_path):
    output = tmp_path / "out.parquet"
    assert run_cli("run", str(tree), str(output), "--keep-parts", *ARGS).returncode == 0
    parts = sorted(output.with_name(output.name + ".parts").glob("*.parquet"))
    assert len(parts) >= 2
    output.unlink()  # as if killed before the merge: the parts are what a resume reuses
    _corrupt_the_path_column(parts[1])
    result = run_cli("run", str(tree), str(output), *ARGS)
    assert result.returncode == 0, result.stderr
    assert "cannot use" in result.stderr and "scoring its files again" in result.stderr
    assert pq.read_table(output).select(COMPARED).equals(clean)
