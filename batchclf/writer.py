"""The output's format: its schema and the run record stored in its metadata (under ``METADATA_KEY``,
defined in ``store.parquet``: the store tells a batchclf output from any other file by it).

Where the output and its parts are written, and how that is made atomic and locked, is the store's
business (``store.parquet``, ``store.parts``, ``Location.lock``); ``job.write_output`` merges the
sources into the output through them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from .store import Location
from .store.parquet import METADATA_KEY, read_schema

TOPK_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))
BASE_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("topk", TOPK_TYPE),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("mtime", pa.timestamp("us", tz="UTC")),
    # What tells a file rewritten with the same size and mtime: a new inode, or (one link only) a new ctime.
    pa.field("inode", pa.int64()),
    pa.field("ctime", pa.timestamp("us", tz="UTC")),
    pa.field("model", pa.string(), nullable=False),
    # True when the file could not be checked (its folder was unreadable) and last run's row was kept.
    pa.field("unverified", pa.bool_()),
    # When the row was scored (UTC); a reused row keeps its own, a row reused from an output older than
    # this column has none. The run that wrote the file is in its metadata (``run_id``).
    pa.field("scored_at", pa.timestamp("us", tz="UTC")),
]


def output_schema(embedding_size: int | None = None, content_hash: bool = False) -> pa.Schema:
    fields = list(BASE_FIELDS)
    if embedding_size:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_size)))
    if content_hash:
        fields.append(pa.field("content_hash", pa.string()))
    return pa.schema(fields)


def read_run_metadata(place: Location | Path) -> dict:
    """The ``batchclf`` metadata (model, version, root, options) stored in an output file."""
    metadata = read_schema(place).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))
