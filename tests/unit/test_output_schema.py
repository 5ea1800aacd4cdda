"""The output's columns: names, types and order are the contract with every reader of the Parquet file."""

from __future__ import annotations

import pyarrow as pa

from batchclf.writer import output_schema

BASE = [
    ("path", pa.string()),
    ("label", pa.string()),
    ("score", pa.float32()),
    ("topk", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))),
    ("status", pa.string()),
    ("error", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("bytes", pa.int64()),
    ("mtime", pa.timestamp("us", tz="UTC")),
    ("inode", pa.int64()),
    ("ctime", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()),
    ("unverified", pa.bool_()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
]


def test_the_base_columns():
    schema = output_schema()
    assert [(f.name, f.type) for f in schema] == BASE
    assert not schema.field("path").nullable and not schema.field("status").nullable


def test_embeddings_and_hashes_are_added_at_the_end():
    schema = output_schema(embedding_size=1280, content_hash=True)
    assert schema.names[-2:] == ["embedding", "content_hash"]
    assert schema.field("embedding").type == pa.list_(pa.float32(), 1280)
    assert schema.field("content_hash").type == pa.string()


def test_exif_columns_only_when_asked_for_and_gps_only_with_gps():
    assert output_schema(exif=None) == output_schema()  # a run without --exif: the schema it always had
    camera = output_schema(content_hash=True, exif="camera")
    assert [(f.name, f.type) for f in camera][len(BASE) + 1 :] == [
        ("exif_time", pa.timestamp("us")),  # the camera's clock, no time zone
        ("exif_utc_offset", pa.int16()),  # minutes east of UTC, when recorded
        ("exif_make", pa.string()),
        ("exif_model", pa.string()),
        ("exif_lens", pa.string()),
        ("exif_orientation", pa.int8()),
    ]
    gps = output_schema(exif="gps")
    assert gps.names[len(BASE) :] == [*camera.names[len(BASE) + 1 :], "exif_latitude", "exif_longitude"]
    assert gps.field("exif_latitude").type == gps.field("exif_longitude").type == pa.float64()
