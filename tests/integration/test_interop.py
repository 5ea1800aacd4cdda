"""The output is plain Parquet: pandas, polars, DuckDB and dask.dataframe read the same rows, ``topk`` included.

One real run over imagenet_objects is read by each tool and compared with what pyarrow reads; the
README's DuckDB query is taken from the README itself and run, so the README stays true.
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

README = Path(__file__).resolve().parents[2] / "README.md"
COLUMNS = ["path", "label", "score", "status", "error", "width", "height", "bytes", "mtime", "topk"]


@pytest.fixture(scope="module")
def predictions(datasets, tmp_path_factory) -> Path:
    """``predictions.parquet`` from one ``batchclf run`` over imagenet_objects (19 images)."""
    output = tmp_path_factory.mktemp("interop") / "predictions.parquet"
    result = run_cli("run", str(datasets / "imagenet_objects"), str(output), "--workers", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    return output


def normalise(value):
    """One Python value for what each library hands back: numpy scalars, arrays, NaN for null, pandas times."""
    if value is None:
        return None
    if isinstance(value, dict):
        return tuple(normalise(value[key]) for key in ("label", "score"))
    if isinstance(value, np.ndarray | list | tuple):
        return [normalise(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc)
    if type(value).__name__ == "NAType":  # pandas.NA
        return None
    return value


def rows_of(records: list[dict]) -> list[tuple]:
    return sorted(tuple(normalise(record[column]) for column in COLUMNS) for record in records)


def pandas_rows(path: Path) -> list[tuple]:
    import pandas

    return rows_of(pandas.read_parquet(path).to_dict("records"))


def polars_rows(path: Path) -> list[tuple]:
    import polars

    return rows_of(polars.read_parquet(path).to_dicts())


def duckdb_rows(path: Path) -> list[tuple]:
    import duckdb

    relation = duckdb.sql(f"SELECT {', '.join(COLUMNS)} FROM read_parquet('{path}')")
    return rows_of([dict(zip(COLUMNS, row)) for row in relation.fetchall()])


def dask_rows(path: Path) -> list[tuple]:
    import dask
    import dask.dataframe

    with dask.config.set(scheduler="synchronous"):  # no cluster needed to read one file
        frame = dask.dataframe.read_parquet(str(path)).compute()
    return rows_of(frame.to_dict("records"))


@pytest.mark.parametrize("reader", [pandas_rows, polars_rows, duckdb_rows, dask_rows], ids=lambda r: r.__name__)
def test_each_tool_reads_the_same_rows_as_pyarrow(predictions, reader):
    expected = rows_of(pq.read_table(predictions).to_pylist())
    assert len(expected) == 19 and all(row[3] == "ok" and len(row[-1]) == 5 for row in expected)
    assert all(isinstance(label, str) and isinstance(score, float) for row in expected for label, score in row[-1])
    assert reader(predictions) == expected


def readme_duckdb_block() -> str:
    section = README.read_text(encoding="utf-8").split("### Reading the output", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return block


def test_readme_duckdb_query_counts_labels_above_the_score(predictions, monkeypatch, capsys):
    import duckdb

    block = readme_duckdb_block()
    assert block.count("\n") == 2 and "predictions.parquet" in block  # two lines, over the output's usual name
    (query,) = re.findall(r'duckdb\.sql\("(.*)"\)', block)
    monkeypatch.chdir(predictions.parent)
    answer = duckdb.sql(query).fetchall()

    table = pq.read_table(predictions)
    above = table.filter(pc.greater(table["score"], 0.5))["label"].to_pylist()
    expected = sorted(((label, above.count(label)) for label in set(above)), key=lambda pair: (-pair[1], pair[0]))
    assert answer == expected and len(expected) >= 5

    exec(compile(block, str(README), "exec"), {})  # the README lines as a reader pastes them
    shown = capsys.readouterr().out
    assert all(label in shown for label, _ in expected)
