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

from .config import EXIF_WITH_LOCATION
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


# --exif (exif.py): the capture time is the camera's clock, without a time zone; the offset it recorded, if any,
# is in minutes east of UTC
EXIF_FIELDS = [
    pa.field("exif_time", pa.timestamp("us")),
    pa.field("exif_utc_offset", pa.int16()),
    pa.field("exif_make", pa.string()),
    pa.field("exif_model", pa.string()),
    pa.field("exif_lens", pa.string()),
    pa.field("exif_orientation", pa.int8()),
]
GPS_FIELDS = [  # --exif gps only: decimal degrees, north and east positive
    pa.field("exif_latitude", pa.float64()),
    pa.field("exif_longitude", pa.float64()),
]


def output_schema(embedding_size: int | None = None, content_hash: bool = False, exif: str | None = None) -> pa.Schema:
    """The output's columns; those of ``--embeddings``, ``--hash`` and ``--exif`` only when asked for."""
    fields = list(BASE_FIELDS)
    if embedding_size:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_size)))
    if content_hash:
        fields.append(pa.field("content_hash", pa.string()))
    if exif:
        fields += EXIF_FIELDS
    if exif == EXIF_WITH_LOCATION:
        fields += GPS_FIELDS
    return pa.schema(fields)


def read_run_metadata(place: Location | Path) -> dict:
    """The ``batchclf`` metadata (model, version, root, options) stored in an output file."""
    metadata = read_schema(place).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))
