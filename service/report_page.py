"""A plain HTML page for a report that has no rendered page (the worker renders the real one).

It only needs the report's JSON, so the API process never imports the engine to show it.
"""

from __future__ import annotations

from html import escape
from typing import Any

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
