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
