"""``batchclf run`` and ``batchclf report`` do not import pandas, which pyarrow would load (0.2-0.4 s) only
to ask whether the arrays it builds come from pandas; ``import pandas`` and ``to_pandas()`` still work after."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

pytest.importorskip("pandas", reason="nothing to keep out where pandas is not installed")

SPY = """
import os, sys


class PandasSpy:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            with open(os.environ["PANDAS_IMPORTED_IN"], "a") as record:
                record.write(f"{os.getpid()}\\n")
        return None  # the import goes on as usual


sys.meta_path.insert(0, PandasSpy())
"""


def _one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the plan then scores in the job's process


@pytest.fixture
def spied(tmp_path, datasets):
    """Two images, and a command runner whose every process (workers included) notes an import of pandas."""
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("pizza.jpg", "teddy1.jpg"):
        shutil.copy(datasets / "imagenet_objects" / name, images / name)
    record = tmp_path / "pandas-imports.txt"
    path = os.pathsep.join(p for p in (str(spy), os.environ.get("PYTHONPATH")) if p)

    def command(*args: str, **options) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "batchclf", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": path, "PANDAS_IMPORTED_IN": str(record)},
            **options,
        )
        assert done.returncode == 0, done.stderr
        assert not record.exists(), f"batchclf {args[0]} imported pandas in process {record.read_text().split()}"
        return done

    return images, command


def test_a_run_on_the_in_process_worker_and_its_report_never_import_pandas(tmp_path, spied):
    images, command = spied
    output = tmp_path / "out.parquet"
    done = command("run", str(images), str(output), "--log-format", "text", preexec_fn=_one_core)
    assert "1 worker in this process" in done.stderr
    assert [row["status"] for row in pq.read_table(output).to_pylist()] == ["ok", "ok"]
    command("report", str(output), str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size


def test_the_embedded_clusters_worker_processes_never_import_pandas(tmp_path, spied):
    images, command = spied
    output = tmp_path / "out.parquet"
    done = command("run", str(images), str(output), "--workers", "2", "--log-format", "text")
    assert "2 workers" in done.stderr
    assert [row["status"] for row in pq.read_table(output).to_pylist()] == ["ok", "ok"]


AFTER_THE_PROBE = """
import sys
import pyarrow as pa
from batchclf.store.parquet import answer_arrows_pandas_probe

answer_arrows_pandas_probe()
table = pa.table({"path": pa.array(["a.jpg", None]), "score": pa.array([0.5, None])})
assert "pandas" not in sys.modules
import pandas

frame = table.to_pandas()
assert frame["path"].tolist()[0] == "a.jpg" and frame["score"].isna().tolist() == [False, True]
assert pa.Table.from_pandas(frame, preserve_index=False).to_pylist() == table.to_pylist()
assert pa.array(pandas.Series([1, None], dtype="Int64")).to_pylist() == [1, None]
print("ok")
"""


def test_pandas_still_works_after_the_probe():
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(AFTER_THE_PROBE)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "ok", done.stderr
