"""The ``--summary`` record's schema (docs/summary.schema.json), checked on the records of real runs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "summary.schema.json").read_text())


def valid_summary(path: Path) -> dict:
    """The summary written at ``path``, after checking it against the schema."""
    record = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(record)
    return record
