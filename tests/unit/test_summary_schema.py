"""docs/summary.schema.json: the --summary record validates, and the schema catches what monitoring relies on."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from batchclf.config import RunConfig
from batchclf.summary import RunSummary, summary_record

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "summary.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _record(**fields) -> dict:
    summary = RunSummary(**fields)
    return summary_record(summary, RunConfig(input=Path("images"), output="s3://bucket/out.parquet"), 0)


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_a_record_validates_with_and_without_changes():
    VALIDATOR.validate(_record())
    changes = {"file": "/tmp/changes.parquet", "new": 8, "changed": 2, "dropped": 3, "newly_failing": 0, "recovered": 1}
    VALIDATOR.validate(_record(changes=changes, rescore_reason="top_k 5 → 3"))


def test_paths_are_absolute_and_urls_stay_urls():
    record = _record()
    assert Path(record["input"]).is_absolute() and record["output"] == "s3://bucket/out.parquet"


def test_skipped_by_extension_has_its_shape():
    VALIDATOR.validate({**_record(), "skipped_by_extension": {".txt": 2, "": 1}})
    assert not VALIDATOR.is_valid({**_record(), "skipped_by_extension": {".txt": "two"}})


@pytest.mark.parametrize("field", sorted(SCHEMA["required"]))
def test_a_missing_field_is_caught(field):
    record = _record()
    del record[field]
    assert not VALIDATOR.is_valid(record)


@pytest.mark.parametrize(
    "change",
    [
        {"unknown_field": 1},
        {"status": "done"},
        {"started": "2026-12-06 08:56:12"},
        {"stage_seconds": {"listing": 0.1}},
        {"changes": {"file": "c.parquet", "new": 1}},
        {"files": -1},
    ],
    ids=["extra field", "status", "started not ISO", "a stage missing", "a change kind missing", "negative count"],
)
def test_a_wrong_value_is_caught(change):
    assert not VALIDATOR.is_valid({**_record(), **change})
