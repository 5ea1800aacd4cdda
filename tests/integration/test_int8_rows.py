"""``--quantize int8`` calibrates on the shipped calibration set, never on the input: an incremental run
and a resumed run give the rows of a full run, and every run of a model shares one converted int8 file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TEST_CACHE, run_cli


@pytest.fixture(scope="module")
def cache() -> Path:
    """The test run's model cache: the int8 file is made by the first run of the suite that asks for it (here
    or in test_backends.py: the same model and calibration set give the same file), once."""
    return Path(TEST_CACHE)


@pytest.fixture(scope="module")
def sources(datasets) -> list[Path]:
    objects = sorted(p for p in (datasets / "imagenet_objects").iterdir() if p.suffix in (".jpg", ".png"))
    return objects + sorted((datasets / "flowers_small").rglob("*.jpg"))[::8]


def _tree(root: Path, sources: list[Path]) -> Path:
    for index, source in enumerate(sources):
        target = root / f"folder{index % 3}" / f"{source.parent.name}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return root


def _arguments(images: Path, output: Path, shard_size: int) -> list[str]:
    return [
        "run",
        str(images),
        str(output),
        "--quantize",
        "int8",
        "--shard-size",
        str(shard_size),
        "--no-progress",
        "--dashboard-address",
        "127.0.0.1:0",
    ]


def _run(cache: Path, images: Path, output: Path, *extra: str, shard_size: int = 4) -> subprocess.CompletedProcess:
    result = run_cli(*_arguments(images, output, shard_size), *extra, env={"BATCHCLF_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    return result


def _assert_same_rows(got: Path, expected: Path) -> None:
    # scored_at left out: a reused row keeps the time it was first scored, a full run's rows are new
    got_rows, expected_rows = (pq.read_table(path).drop_columns(["scored_at"]).to_pylist() for path in (got, expected))
    assert [row["path"] for row in got_rows] == [row["path"] for row in expected_rows]
    differ = [(g["path"], g["score"], e["score"]) for g, e in zip(got_rows, expected_rows) if g != e]
    assert not differ, f"{len(differ)} rows differ from a full run's (path, score, full run's score): {differ[:5]}"


def _int8_files(cache: Path) -> list[Path]:
    """The full-integer models in the cache (uint8 input); other tests may add float ones meanwhile."""
    from ai_edge_litert.interpreter import Interpreter

    files = sorted((cache / "litert").glob("*.tflite"))  # finished files: a partial one has another suffix
    return [p for p in files if Interpreter(model_path=str(p)).get_input_details()[0]["dtype"] == np.uint8]


@pytest.mark.slow
def test_an_incremental_int8_run_equals_a_full_run(cache, sources, tmp_path):
    images = _tree(tmp_path / "images", sources[:20])
    nightly = tmp_path / "nightly.parquet"
    _run(cache, images, nightly, "--incremental")
    changed = sorted(images.rglob("*.jpg"))[:2]
    for target, replacement in zip(changed, sources[20:22]):
        shutil.copy(replacement, target)
    _tree(tmp_path / "images" / "new", sources[22:25])

    second = _run(cache, images, nightly, "--incremental")
    assert "2 changed" in second.stderr and "3 new" in second.stderr, second.stderr
    full = tmp_path / "full.parquet"
    _run(cache, images, full)
    _assert_same_rows(nightly, full)


@pytest.mark.slow
def test_an_int8_run_interrupted_after_its_first_part_resumes_to_a_full_run(cache, sources, tmp_path):
    images = _tree(tmp_path / "images", sources[:24])
    full = tmp_path / "full.parquet"
    _run(cache, images, full, shard_size=2)

    output = tmp_path / "out.parquet"
    process = subprocess.Popen(
        [sys.executable, "-m", "batchclf", *_arguments(images, output, 2)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "BATCHCLF_CACHE": str(cache)},
    )
    parts = output.with_name(output.name + ".parts")
    deadline = time.monotonic() + 300
    while not list(parts.glob("*.parquet")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no part appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert not output.exists()

    resumed = _run(cache, images, output, shard_size=2)
    assert "resuming" in resumed.stderr, resumed.stderr
    _assert_same_rows(output, full)


@pytest.mark.slow
def test_runs_over_different_trees_share_one_int8_model(cache, sources, tmp_path):
    first = _tree(tmp_path / "first", sources[:10])
    second = _tree(tmp_path / "second", sources[-10:])
    _run(cache, first, tmp_path / "first.parquet")
    after_first = _int8_files(cache)
    assert len(after_first) == 1, after_first
    again = _run(cache, second, tmp_path / "second.parquet")
    assert "converting" not in again.stderr, again.stderr
    assert _int8_files(cache) == after_first  # the second tree's run added no model
