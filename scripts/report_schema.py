"""Write (or check) report.schema.json: the JSON Schema of GradDoctor's report, for pipelines.

Generated from the pydantic models (``Report.model_json_schema()``, the serialization side: what
``--format json`` prints and the API returns)::

    python scripts/report_schema.py           # rewrite report.schema.json (make schema)
    python scripts/report_schema.py --check   # exit 1 if the committed file is not current
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "report.schema.json"


def report_schema() -> dict:
    """The report's JSON Schema (draft 2020-12), tagged with the report schema version."""
    from diagnostics.report import SCHEMA_VERSION, Report

    schema = Report.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "x-graddoctor-schema-version": SCHEMA_VERSION, **schema}


def render() -> str:
    return json.dumps(report_schema(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.is_file() else ""
        if current != text:
            print(f"{SCHEMA_PATH.name} is not current: run `make schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
