"""Presentation of a :class:`~diagnostics.compare.Comparison`: terminal text and an HTML page.

No matplotlib: the service's API process renders comparison pages and never loads the engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape

from diagnostics.compare import Comparison, LayerChange
from diagnostics.render._format import MISSING, number, printable
from diagnostics.render.blocks import block_key

_MAX_REASONS = 10
DEFAULT_TOP = 20  # layers listed by default: the largest moves first; --top 0 lists every one


_UNCHANGED = math.log10(1.1)  # the text lists layers whose signal moved by 10 % or more


def _moved(change: LayerChange) -> float:
    """How far the layer's signal moved, in decades: relative to the reference, or absolute."""
    if change.regressed and change.drift is None:
        return math.inf
    steps = [abs(math.log10(x)) for x in (change.drift, change.signal_change) if x]
    return max(steps, default=-1.0)


def moved_layers(comparison: Comparison, top: int = DEFAULT_TOP,
                 changed_only: bool = False) -> list[LayerChange]:
    """Regressed layers first, then by how far each layer's signal moved (either way)."""
    # moves equal to 0.1 % count as ties, which keep the input → output order
    ranked = sorted(comparison.layers,
                    key=lambda c: (not c.regressed, -round(_moved(c), 3), c.index))
    if changed_only:
        ranked = [c for c in ranked if c.regressed or _moved(c) >= _UNCHANGED]
    return ranked if top <= 0 else ranked[:top]


def render_comparison_text(comparison: Comparison, top: int = DEFAULT_TOP) -> str:
    """The comparison as plain text: gate result, verdict change, the layers that moved most."""
    v = comparison.verdict
    lines = [
        f"Gradient health: {'WORSE' if comparison.worse else 'not worse'} "
        f"(factor {number(comparison.factor)})",
        f"Verdict: {v.status_before.value} → {v.status_after.value}; backward-signal ratio "
        f"{number(v.ratio_before)} → {number(v.ratio_after)}",
        f"Reference layer: {printable(comparison.reference_layer or MISSING)}",
    ]
    lines += [f"  worse: {printable(reason)}" for reason in comparison.reasons[:_MAX_REASONS]]
    if len(comparison.reasons) > _MAX_REASONS:
        lines.append(f"  ... and {len(comparison.reasons) - _MAX_REASONS} more (--format json "
                     "lists every one)")
    blocks = block_changes(comparison)
    if blocks:
        lines.append("Blocks (layers grouped by module path): largest ‖δ‖ before → after")
        width = max(len(printable(b[0], 60)) for b in blocks)
        lines += [f"{'!' if regressed else ' '} {printable(key, 60).ljust(width)}  "
                  f"{number(before):>9} → {number(after):<9} × {number(ratio):<9}"
                  f"{f'  {regressed} of {count} layers regressed' if regressed else ''}".rstrip()
                  for key, count, regressed, before, after, ratio in blocks]
    shown = moved_layers(comparison, top, changed_only=True)
    if not shown:
        lines.append(f"{len(comparison.layers)} layers matched by name; no backward signal "
                     "moved by 10 % or more.")
    else:
        lines.append(f"{len(comparison.layers)} layers matched by name; {len(shown)} shown "
                     "(moved by 10 % or more, largest first; '!' = regressed):")
    head = ("", "layer", "‖δ‖ before", "‖δ‖ after", "× change", "rel. before", "rel. after")
    rows = [("!" if c.regressed else "", printable(c.name, 60), number(c.signal_before),
             number(c.signal_after), number(c.signal_change), number(c.relative_before),
             number(c.relative_after)) for c in shown]
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) if rows else len(head[i])
              for i in range(len(head))]
    for row in (head, *rows) if rows else ():
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                 *(cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True))]
        lines.append("  ".join(cells).rstrip())
    params = sorted((p for p in comparison.parameters
                     if p.change and abs(math.log10(p.change)) >= _UNCHANGED),
                    key=lambda p: -abs(math.log10(p.change or 1.0)))
    params = params[:top] if top > 0 else params
    if params:
        lines.append("Parameter gradients ‖∂L/∂W‖ that moved by 10 % or more, largest first:")
        lines += [f"  {printable(p.name, 60)}: {number(p.grad_norm_before)} → "
                  f"{number(p.grad_norm_after)} (× {number(p.change)})" for p in params]
    for label, names in (("only before", comparison.only_before),
                         ("only after", comparison.only_after)):
        if names:
            listed = ", ".join(printable(n) for n in names[:8])
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            lines.append(f"Layers {label}: {listed}{more}")
    return "\n".join(lines) + "\n"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#1f2328;margin:0 auto;max-width:1200px;
 padding:1rem 1.5rem 3rem}h1{font-size:1.4rem}h2{font-size:1.1rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem;table-layout:auto}
th,td{border-bottom:1px solid #eaeef2;padding:.25rem .5rem;text-align:left}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.name{max-width:34rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tr.regressed td{background:#fff5f5}.worse{color:#cf222e;font-weight:600}
.ok{color:#1a7f37;font-weight:600}code{font:12px ui-monospace,monospace}
"""


def render_comparison_html(comparison: Comparison, before_label: str, after_label: str,
                           links: dict[str, str] | None = None) -> str:
    """A self-contained HTML page (inline CSS, no script) showing the comparison.

    Args:
        comparison: What :func:`diagnostics.compare.compare_reports` returned.
        before_label: How to name the baseline (a job id, a file name).
        after_label: How to name the changed model.
        links: Optional ``{label: href}`` shown under the title (e.g. each job's own report).
    """
    v = comparison.verdict
    more = len(comparison.reasons) - _MAX_REASONS
    gate = (f"<p class=worse>Gradient health got worse (factor {_t(number(comparison.factor))})"
            "</p><ul>" + "".join(f"<li>{_t(r)}</li>" for r in comparison.reasons[:_MAX_REASONS])
            + (f"<li>… and {more} more (marked in the table)</li>" if more > 0 else "") + "</ul>"
            if comparison.worse else
            f"<p class=ok>Gradient health not worse (factor {_t(number(comparison.factor))})</p>")
    nav = " · ".join(f'<a href="{_t(href)}">{_t(label)}</a>' for label, href in
                     (links or {}).items())
    rows = "".join(
        f"<tr class={'regressed' if c.regressed else 'same'}><td class=name "
        f'title="{_t(c.name)}"><code>{_t(c.name)}</code></td><td>{_t(c.op_type)}</td>'
        + "".join(f"<td class=num>{_t(number(x))}</td>" for x in (
            c.signal_before, c.signal_after, c.signal_change, c.relative_before,
            c.relative_after))
        + "</tr>" for c in moved_layers(comparison, top=0))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\">"
        "<meta name=referrer content=no-referrer>"
        f"<title>GradDoctor comparison: {_t(before_label)} → {_t(after_label)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Comparison: <code>{_t(before_label)}</code> → <code>{_t(after_label)}</code></h1>"
        f"<p>{nav}</p><section id=comparison>{gate}"
        f"<p>Verdict {_t(v.status_before.value)} → {_t(v.status_after.value)}; backward-signal "
        f"ratio {_t(number(v.ratio_before))} → {_t(number(v.ratio_after))}. Relative signal = "
        f"‖δ_layer‖ / ‖δ_reference‖, reference <code>"
        f"{_t(comparison.reference_layer or MISSING)}</code>.</p>"
        f"{_blocks_table(comparison)}"
        f"<h2>Layers ({len(comparison.layers)} matched; largest moves first)</h2>"
        "<table><thead><tr><th>layer</th><th>op</th><th>‖δ‖ before</th><th>‖δ‖ after</th>"
        "<th>× change</th><th>relative before</th><th>relative after</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section></body></html>\n"
    )


def block_changes(comparison: Comparison) -> list[tuple[str, int, int, float | None,
                                                         float | None, float | None]]:
    """Per block of layers (grouped by module path, as in the report), in the AFTER model's
    order: (block, layers, regressed layers, largest ‖δ‖ before, after, after / before).
    Empty when the names form no blocks worth a summary."""
    groups: dict[str, list[LayerChange]] = {}
    for change in sorted(comparison.layers, key=lambda c: c.index):
        groups.setdefault(block_key(change.name), []).append(change)
    if len(groups) < 2 or len(comparison.layers) < 1.5 * len(groups):
        return []
    rows = []
    for key, changes in groups.items():
        before = _largest(c.signal_before for c in changes)
        after = _largest(c.signal_after for c in changes)
        ratio = after / before if before and after is not None else None
        rows.append((key, len(changes), sum(c.regressed for c in changes), before, after, ratio))
    return rows


def _blocks_table(comparison: Comparison) -> str:
    blocks = block_changes(comparison)
    if not blocks:
        return ""
    rows = []
    for key, count, regressed, before, after, change in blocks:
        rows.append(f"<tr class={'regressed' if regressed else 'same'}><td class=name "
                    f'title="{_t(key)}"><code>{_t(key)}</code></td>'
                    f"<td class=num>{count}</td><td class=num>{regressed}</td>"
                    + "".join(f"<td class=num>{_t(number(x))}</td>" for x in (before, after,
                                                                             change))
                    + "</tr>")
    return ("<h2>Blocks (layers grouped by module path)</h2><table><thead><tr><th>block</th>"
            "<th>layers</th><th>regressed</th><th>max ‖δ‖ before</th><th>max ‖δ‖ after</th>"
            f"<th>× change</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _largest(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


def _t(value: object) -> str:
    return escape(printable(str(value)), quote=True)
