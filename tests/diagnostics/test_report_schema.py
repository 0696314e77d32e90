"""report.schema.json is current (regenerate with `make schema`) and describes real reports."""

from __future__ import annotations

import json

from diagnostics.report import Status
from scripts.report_schema import SCHEMA_PATH, render
from tests.report_factory import demo_report


def test_committed_schema_is_current():
    assert SCHEMA_PATH.is_file(), "report.schema.json is missing: run `make schema`"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), \
        "report.schema.json is out of date: run `make schema` and commit it"


def test_schema_describes_every_report_field_and_status():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    report = json.loads(demo_report(temporal=True).model_dump_json())
    assert set(schema["properties"]) == set(report)
    assert schema["$schema"].endswith("2020-12/schema")
    statuses = schema["$defs"]["Status"]["enum"]
    assert set(statuses) == {status.value for status in Status}
    layer = schema["$defs"]["LayerReport"]
    assert set(report["layers"][0]) <= set(layer["properties"])
