"""Read one run's Parquet output into the figures the report shows, reading only the columns it needs.

Everything here works on Arrow columns, so a million-row output is summarised in about a second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import UsageError
from ..store import Location
from ..writer import METADATA_KEY

NO_LABEL = "(no label)"  # an ok row whose top score was below the run's --threshold
ERROR_LABEL = "(error)"
COLUMNS = ("path", "label", "score", "status", "error")
STATUSES = frozenset({"ok", "error"})
NOT_A_RUN = "is it the output of 'batchclf run'?"


@dataclass(frozen=True)
class Item:
    """One image as the report shows it."""

    path: str
    label: str
    score: float | None
    previous: str | None = None  # the label in the compared run, for changed predictions
    previous_score: float | None = None  # its score there

    @property
    def caption(self) -> str:
        return "" if self.score is None else f"{self.score:.2f}"


@dataclass(frozen=True)
class Run:
    source: Location
    metadata: dict
    table: pa.Table  # COLUMNS, with NO_LABEL in place of the null label of ok rows

    @cached_property
    def ok(self) -> pa.Table:
        return self.table.filter(pc.equal(self.table["status"], "ok"))

    @cached_property
    def failed(self) -> pa.Table:
        return self.table.filter(pc.not_equal(self.table["status"], "ok"))

    @property
    def files(self) -> int:
        return self.table.num_rows

    @property
    def images_per_second(self) -> float | None:
        seconds = self.metadata.get("seconds")
        files = self.metadata.get("scored", self.metadata.get("files", self.files))  # incremental: scored only
        return files / seconds if seconds else None

    def outcomes(self) -> pa.Table:
        """``path``, ``outcome`` (the label, or ERROR_LABEL for a file that failed) and ``score``."""
        outcome = pc.if_else(pc.equal(self.table["status"], "ok"), self.table["label"], ERROR_LABEL)
        return pa.table({"path": self.table["path"], "outcome": outcome, "score": self.table["score"]})


def read_run(path: Location, option: str = "run output") -> Run:
    """Open a ``batchclf run`` output; ``option`` names the argument in error messages.

    The file may come from anywhere, so everything the report relies on is checked here, before any
    work: the columns and their types, no null path or status, no path twice, and metadata that is a
    JSON object with fields of the right types. Each problem is one ``UsageError`` line.
    """
    if not path.is_file():  # an object that cannot be reached says so itself, in one line
        raise UsageError(f"{option} {path} does not exist; give the Parquet file written by 'batchclf run'")
    what = f"{option} {path}"
    try:
        with path.arrow_source() as source:
            schema = pq.read_schema(source)
    except (pa.ArrowException, OSError):
        raise UsageError(f"{what} is not a Parquet file; give the output of 'batchclf run'") from None
    _check_schema(what, schema)
    metadata = _run_metadata(what, schema)
    try:
        with path.arrow_source() as source:
            table = pq.read_table(source, columns=list(COLUMNS)).select(list(COLUMNS)).cast(_TABLE_SCHEMA)
    except (pa.ArrowException, OSError) as error:
        raise UsageError(f"cannot read {what}: {_first_line(error)}; is it a complete 'batchclf run' output?") from None
    _check_rows(what, table)
    is_ok = pc.equal(table["status"], "ok")
    label = pc.if_else(pc.and_(is_ok, pc.is_null(table["label"])), NO_LABEL, table["label"])
    table = table.set_column(table.schema.get_field_index("label"), "label", label)
    return Run(path, metadata, table)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


# The types the report computes with; other text and float encodings are cast to them (two runs then join).
_TABLE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


_COLUMN_TYPES = {
    "path": (_is_text, "string"),
    "label": (_is_text, "string"),
    "score": (pa.types.is_floating, "float"),
    "status": (_is_text, "string"),
    "error": (_is_text, "string"),
}


def _check_schema(what: str, schema: pa.Schema) -> None:
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise UsageError(f"{what} has no {', '.join(missing)} column(s); {NOT_A_RUN}")
    for name, (accepts, expected) in _COLUMN_TYPES.items():
        kind = schema.field(name).type
        if not accepts(kind):
            raise UsageError(f"{what}: column {name} is {kind}, expected {expected}; {NOT_A_RUN}")


# Metadata fields the report computes with, the JSON types each may have (null is always allowed), and their name.
_METADATA_TYPES = {
    "input_root": ((str,), "text"),
    "seconds": ((int, float), "number of 0 or more"),
    "files": ((int,), "count"),
    "scored": ((int,), "count"),
}


def _valid_field(value, types: tuple[type, ...]) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, types):
        return False
    return not isinstance(value, int | float) or (math.isfinite(value) and value >= 0)


def _run_metadata(what: str, schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    key = METADATA_KEY.decode()
    try:
        metadata = json.loads(raw)
    except ValueError:  # bad JSON and bytes that are not UTF-8 alike
        raise UsageError(f"{what}: its '{key}' metadata is not valid JSON; {NOT_A_RUN}") from None
    if not isinstance(metadata, dict):
        kind = type(metadata).__name__
        raise UsageError(f"{what}: its '{key}' metadata is a JSON {kind}, not an object; {NOT_A_RUN}")
    for field, (types, expected) in _METADATA_TYPES.items():
        if not _valid_field(metadata.get(field), types):
            shown = json.dumps(metadata[field])[:60]
            raise UsageError(f"{what}: metadata field {field!r} is {shown}, expected a {expected}")
    return metadata


def _check_rows(what: str, table: pa.Table) -> None:
    for name in ("path", "status"):
        nulls = table[name].null_count
        if nulls:
            raise UsageError(f"{what}: {nulls:,} row(s) have no {name}; every row of a 'batchclf run' output has one")
    statuses = set(pc.unique(table["status"]).to_pylist()) - STATUSES
    if statuses:
        shown = ", ".join(sorted(repr(s) for s in statuses)[:3])
        raise UsageError(f"{what}: status must be 'ok' or 'error', found {shown}")
    distinct = pc.count_distinct(table["path"]).as_py()
    if distinct != table.num_rows:
        raise UsageError(f"{what}: {table.num_rows - distinct:,} path(s) appear more than once; each file has one row")


def label_counts(labels: pa.ChunkedArray) -> list[tuple[str, int]]:
    """(label, count) of a label column, most frequent first, ties by name."""
    if len(labels) == 0:
        return []
    counts = pc.value_counts(labels)
    pairs = [(str(v["values"]), int(v["counts"])) for v in counts.to_pylist()]
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


def score_histogram(table: pa.Table, bins: int = 20) -> list[int]:
    scores = table["score"].drop_null().to_numpy(zero_copy_only=False)
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]


def count_below(table: pa.Table, low: float) -> int:
    return int(pc.sum(pc.less(table["score"], low)).as_py() or 0)


def _items(table: pa.Table) -> list[Item]:
    return [Item(r["path"], r["label"], r["score"]) for r in table.select(["path", "label", "score"]).to_pylist()]


def low_confidence(table: pa.Table, low: float, limit: int) -> list[Item]:
    """The least confident predictions below ``low``, least confident first."""
    below = table.filter(pc.less(table["score"], low))
    order = pc.sort_indices(below, [("score", "ascending"), ("path", "ascending")])
    return _items(below.take(order[:limit]))


def error_rows(table: pa.Table, limit: int) -> list[tuple[str, str]]:
    """(path, error) of the first ``limit`` failed files by path."""
    order = pc.sort_indices(table, [("path", "ascending")])
    rows = table.take(order[:limit]).select(["path", "error"]).to_pylist()
    return [(r["path"], r["error"] or "") for r in rows]


def extremes(table: pa.Table, label: str, count: int) -> tuple[list[Item], list[Item]]:
    """The highest and lowest scoring images of one label: up to ``count`` in all, no image twice."""
    rows = table.filter(pc.equal(table["label"], label))
    order = pc.sort_indices(rows, [("score", "descending"), ("path", "ascending")])
    if rows.num_rows <= count:
        return _items(rows.take(order)), []
    high = math.ceil(count / 2)
    low = count - high
    return _items(rows.take(order[:high])), _items(rows.take(order[rows.num_rows - low :])) if low else []
