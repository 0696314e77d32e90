"""A plain HTML page for a report that has no rendered page (the worker renders the real one).

It only needs the report's JSON, so the API process never imports the engine to show it.
"""

from __future__ import annotations

from html import escape
from typing import Any

from pydantic import ValidationError

from diagnostics.report import Report
from service.errors import ConflictError
from service.jobs import JobService
from service.routes._views import API_PREFIX
from service.schemas import JobStatus

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
       "form-action 'none'")


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("median")
    if isinstance(value, float):
        return f"{value:.3g}"
    return escape("" if value is None else str(value))


def fallback_page(report: dict[str, Any]) -> str:
    """The verdict, the per-layer backward signal and the remedies as plain HTML."""
    verdict = report.get("verdict") or {}
    rows = "".join(
        f"<tr><td>{_cell(layer.get('name'))}</td><td>{_cell(layer.get('op_type'))}</td>"
        f"<td>{_cell(layer.get('depth'))}</td><td>{_cell(layer.get('output_grad_norm'))}</td>"
        f"<td>{_cell(', '.join(layer.get('flags') or []))}</td></tr>"
        for layer in report.get("layers") or []
    )
    remedies = "".join(
        f"<li><b>{_cell(remedy.get('title'))}</b>: {_cell(remedy.get('rationale'))}</li>"
        for remedy in report.get("remedies") or []
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<title>GradDoctor report</title><style>body{font:14px system-ui,sans-serif;"
        "max-width:1100px;margin:auto;padding:1rem}td,th{padding:.2rem .5rem;text-align:left}"
        "</style></head><body>"
        f"<h1>Verdict: {_cell(verdict.get('status'))}</h1><p>{_cell(verdict.get('summary'))}</p>"
        "<h2>Layers</h2><table><tr><th>Layer</th><th>Op</th><th>Depth</th>"
        f"<th>‖∂L/∂output‖</th><th>Flags</th></tr>{rows}</table>"
        f"<h2>Remedies</h2><ol>{remedies or '<li>none</li>'}</ol></body></html>"
    )


def comparison_page(jobs: JobService, owner: str, *, baseline: str, job_id: str) -> str:
    """How the gradients changed from the ``baseline`` job to ``job_id`` (both the owner's).

    Pure report arithmetic (``diagnostics.compare``, no torch): the API process renders it.
    A baseline of another key is a 404, like any job of another key.
    """
    from diagnostics.compare import compare_reports
    from diagnostics.render.comparison import render_comparison_html

    before, after = (_succeeded_report(jobs, which, owner) for which in (baseline, job_id))
    links = {f"report {baseline} (before)": f"{API_PREFIX}/{baseline}/report",
             f"report {job_id} (after)": f"{API_PREFIX}/{job_id}/report"}
    return render_comparison_html(compare_reports(before, after), baseline, job_id, links)


def _succeeded_report(jobs: JobService, job_id: str, owner: str) -> Report:
    record = jobs.get(job_id, owner)
    if record.status != JobStatus.SUCCEEDED:
        raise ConflictError(f"diagnosis {job_id} is {record.status}; it can be compared once "
                            "it has succeeded", status=record.status)
    return _report(job_id, record.result or {})


def _report(job_id: str, result: dict[str, Any]) -> Report:
    try:
        return Report.model_validate(result)
    except ValidationError:
        raise ConflictError(f"the report of diagnosis {job_id} was written by another version "
                            "of GradDoctor and cannot be compared") from None
