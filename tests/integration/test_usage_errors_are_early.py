"""A usage error is answered by a fresh process before Dask, TensorFlow or Arrow's compute kernels load."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("distributed", "tensorflow", "pyarrow.compute", "keras", "ai_edge_litert", "numpy")
PROBE = (
    "import sys\n"
    "from batchclf.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--batch-size", "0"], "--batch-size must be a positive number, got 0"),
        (["--top-k", "-1"], "--top-k must be a positive number, got -1"),
        (["--retries", "-1"], "--retries must be 0 or more, got -1"),
    ],
)
def test_a_bad_option_is_refused_before_the_machinery_loads(tmp_path, arguments, message):
    (tmp_path / "images").mkdir()
    args = ["run", str(tmp_path / "images"), str(tmp_path / "out.parquet"), *arguments]
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[0] == f"batchclf: error: {message}"
    assert lines[-1] == "HEAVY=", f"imported before refusing: {lines[-1]}"
    assert not (tmp_path / "out.parquet").exists()


def test_a_missing_input_is_refused_before_the_machinery_loads(tmp_path):
    args = ["run", str(tmp_path / "missing"), str(tmp_path / "out.parquet")]
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2
    assert lines[0].startswith(f"batchclf: error: input {tmp_path / 'missing'} does not exist")
    assert lines[-1] == "HEAVY="
