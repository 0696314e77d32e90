"""The report as one self-contained HTML page: inline CSS and SVG, no script, no request.

Every string that comes from the diagnosed model (layer, parameter and input names, remedy text
that quotes them) is escaped, and a Content-Security-Policy forbids scripts and every fetch, so a
crafted layer name can neither run code nor make the page call out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from diagnostics.render._format import (
    MISSING,
    number,
    percent,
    printable,
    short_param_name,
    source_line,
    stat,
    temporal_line,
)
from diagnostics.render.blocks import Block, group_layers, worth_grouping
from diagnostics.report import (
    Cause,
    Evidence,
    LayerReport,
    ParameterStats,
    Remedy,
    Report,
    Status,
    Verdict,
)

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'")
_MAX_LISTED_LAYERS = 20  # a remedy may target hundreds of layers; the table has them all
_MAX_LEGEND_ROWS = 12  # more flagged blocks/layers than this: the list folds into <details>
_LAYER_CAPTION = ("Backward signal ‖δ‖ = ‖∂L/∂output‖ per layer (median over samples, band: "
                  "min–max) and the largest parameter-gradient norm of each layer. Layers with "
                  "flags are circled.")
_BLOCK_CAPTION = ("One point per block of layers (grouped by module path): the block's largest "
                  "backward signal ‖δ‖ = ‖∂L/∂output‖ — its strongest path, the skip path of a "
                  "residual block — with a band down to its smallest, and the largest "
                  "parameter-gradient norm in the block. Blocks with flagged layers are circled; "
                  "open a block below for its layers.")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 margin:0 auto;max-width:1200px;padding:1rem 1.5rem 3rem;background:#fff}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.8rem 0 .5rem;
 border-bottom:1px solid #d0d7de;padding-bottom:.2rem}h3{font-size:1rem;margin:.2rem 0}
.muted{color:#57606a}code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;
 overflow-wrap:anywhere}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:1rem;font-weight:600;color:#fff;
 font-size:.85rem;text-transform:uppercase;letter-spacing:.03em}
.s-healthy{background:#1a7f37}.s-vanishing{background:#9a6700}.s-exploding{background:#cf222e}
.s-inconclusive{background:#6e7781}
.flag{display:inline-block;padding:0 .4rem;margin:0 .15rem .1rem 0;border-radius:.3rem;
 background:#ffebe9;color:#a40e26;font-size:.8rem;border:1px solid #ffcecb}
.verdict{border:1px solid #d0d7de;border-radius:.5rem;padding:.8rem 1rem;margin:1rem 0}
.summary{font-size:1.05rem;margin:.5rem 0}
table{border-collapse:collapse;margin:.4rem 0;font-size:.85rem}
th,td{border-bottom:1px solid #eaeef2;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}td.num{text-align:right;white-space:nowrap;
 font-variant-numeric:tabular-nums}tr.flagged td{background:#fff5f5}
tr.fired td{background:#fff8c5}.wide{overflow-x:auto;max-width:100%}
figure{margin:.5rem 0}figcaption{color:#57606a;font-size:.85rem}
.remedy{border:1px solid #d0d7de;border-radius:.5rem;padding:.7rem 1rem;margin:.7rem 0}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.4rem 0}
dl.kv dt{color:#57606a}dl.kv dd{margin:0}
td.name{max-width:26rem;min-width:8rem;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
td.name code{overflow-wrap:normal;white-space:nowrap}
details.block{border:1px solid #eaeef2;border-radius:.4rem;margin:.25rem 0}
details.block[open]{border-color:#d0d7de}details.block>summary{cursor:pointer;padding:.3rem .5rem;
 display:flex;flex-wrap:wrap;gap:.2rem 1rem;align-items:baseline;list-style:none}
details.block>summary::before{content:"▸";color:#57606a}
details.block[open]>summary::before{content:"▾"}
details.block>.wide{padding:0 .5rem .4rem}
.bn{color:#57606a;min-width:2rem;text-align:right;font-variant-numeric:tabular-nums}
.bname{min-width:14rem;max-width:30rem;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bcount,.bstat{color:#57606a;font-size:.85rem;white-space:nowrap}
details.legend>summary{cursor:pointer;color:#57606a}a.guide{font-size:.8rem;margin-left:.4rem}
"""


def render_html(report: Report) -> str:
    """Render a report as a self-contained HTML page.

    Args:
        report: The finished diagnosis.

    Returns:
        One HTML document (UTF-8 text) with inline CSS and the plots as inline SVG: it opens
        offline and requests nothing. The gradient-flow plot is the ``<svg>`` with
        ``id="gradient-flow-plot"``; the temporal plot, when present, ``id="temporal-plot"``.
    """
    from diagnostics.render import plot  # matplotlib is slow to import; text output never needs it

    title = f"GradDoctor: {report.source.name or 'model'} — {report.verdict.status}"
    blocks = group_layers(report.layers)
    grouped = worth_grouping(blocks, report.layers)
    body = [
        f"<header><h1>{_t(title)}</h1><p class=muted>{_t(source_line(report.source))}</p></header>",
        _verdict(report.verdict),
        "<h2>Gradient flow</h2>",
        _figure(plot.gradient_flow_svg(report.layers, blocks if grouped else None),
                _BLOCK_CAPTION if grouped else _LAYER_CAPTION),
        _flagged_legend(blocks if grouped else None, report.layers),
        *([f"<h2>Layers ({len(report.layers)} in {len(blocks)} blocks)</h2>",
           "<p class=muted>Grouped by module path; open a block for its layers.</p>",
           _blocks(blocks)] if grouped else
          [f"<h2>Layers ({len(report.layers)})</h2>", _layers_table(report.layers)]),
        *([f"<h2>Causes ({len(report.causes)})</h2>", *(_cause(c) for c in report.causes)]
          if report.causes else []),
        f"<h2>Remedies ({len(report.remedies)})</h2>",
        "".join(_remedy(r) for r in sorted(report.remedies, key=lambda r: r.rank))
        or "<p class=muted>None: the evidence supports no change.</p>",
    ]
    if report.temporal:
        body += ["<h2>Gradient over time steps</h2>",
                 _figure(plot.temporal_svg(report.temporal), _temporal_caption(report))]
    if report.notes:
        body += ["<h2>Notes</h2><ul>", *(f"<li>{_t(n)}</li>" for n in report.notes), "</ul>"]
    footer = f"GradDoctor report, schema {report.schema_version}"
    body += ["<h2>Run</h2>", _run(report), f"<footer class=muted><p>{_t(footer)}</p></footer>"]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name=referrer content=no-referrer>'
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_t(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def _t(value: object) -> str:
    """Escape for HTML text and attribute values (quotes included)."""
    return escape(printable(str(value)), quote=True)


def _badge(status: Status) -> str:
    return f'<span class="badge s-{_t(status.value)}">{_t(status.value)}</span>'


def _flags(flags: Iterable[str]) -> str:
    return "".join(f"<span class=flag>{_t(f)}</span>" for f in flags)


def _guide(item: object) -> str:
    """A link to the guide's section on a rule, cause or remedy, when the report carries one.

    Read with getattr: reports written before the ``doc`` field existed have none.
    """
    doc = getattr(item, "doc", None)
    return f' <a class=guide href="{_t(doc)}">guide</a>' if doc else ""


def _flag_counts(counts: Counter) -> str:
    """Flag chips with how many layers carry each (``vanishing ×4``)."""
    return "".join(f"<span class=flag>{_t(f)} ×{n}</span>" if n > 1 else _flags([f])
                   for f, n in counts.items())


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are already-escaped HTML."""
    return "<dl class=kv>" + "".join(f"<dt>{_t(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _table(head: Sequence[str], rows: Iterable[str]) -> str:
    header = "".join(f"<th>{h}</th>" for h in head)
    return (f"<div class=wide><table><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_t(caption)}</figcaption></figure>"


def _verdict(verdict: Verdict) -> str:
    rules = _table(
        ["rule", "value", "threshold", "fired", "detail"],
        (f"<tr class={'fired' if r.fired else 'quiet'}><td>{_t(r.rule)}{_guide(r)}</td>"
         f"<td class=num>{number(r.value)}</td><td class=num>{number(r.threshold)}</td>"
         f"<td>{'yes' if r.fired else 'no'}</td><td>{_t(r.detail)}</td></tr>"
         for r in verdict.evidence.rules),
    ) if verdict.evidence.rules else ""
    return (
        f"<section class=verdict id=verdict>{_badge(verdict.status)} {_flags(verdict.flags)}"
        f"<p class=summary>{_t(verdict.summary)}</p>{_evidence(verdict.evidence)}{rules}</section>"
    )


def _evidence(ev: Evidence) -> str:
    def names(values: Sequence[str]) -> str:
        return ", ".join(f"<code>{_t(v)}</code>" for v in values) or MISSING

    pairs = [
        ("backward-signal ratio (deepest / shallowest)", _t(stat(ev.backward_signal_ratio, True))),
        ("… uncorrected for width", _t(stat(ev.backward_signal_ratio_raw, True))),
        ("gain per layer", _t(number(ev.per_layer_gain))),
        ("deepest / shallowest layer", f"{names([ev.deepest_layer or MISSING])} / "
                                       f"{names([ev.shallowest_layer or MISSING])}"),
        ("weight-gradient ratio (first / last)", _t(stat(ev.weight_grad_ratio, True))),
        ("largest grad / weight", f"{number(ev.max_grad_to_weight)} "
                                  f"{names([ev.max_grad_to_weight_parameter or MISSING])}"),
        ("non-finite values", _t(ev.nonfinite_count)),
    ]
    if ev.first_nonfinite_forward or ev.first_nonfinite_backward:
        pairs.append(("first non-finite (forward / backward)",
                      f"{names([ev.first_nonfinite_forward or MISSING])} / "
                      f"{names([ev.first_nonfinite_backward or MISSING])}"))
    for label, layers in (("dead layers", ev.dead_layers), ("dying layers", ev.dying_layers),
                          ("saturated layers", ev.saturated_layers)):
        if layers:
            pairs.append((label, names(layers)))
    return _kv(pairs)


_LAYER_HEAD = ["#", "layer", "op", "depth", "‖δ‖ [min, max]", "‖∂L/∂W‖", "grad / weight",
               "saturated", "dead", "flags"]


def _layers_table(layers: Sequence[LayerReport]) -> str:
    if not layers:
        return "<p class=muted>No layers were measured.</p>"
    rows = (_layer_row(layer, layer.name)
            for layer in sorted(layers, key=lambda layer: layer.index))
    return f"<div id=layers>{_table(_LAYER_HEAD, rows)}</div>"


def _blocks(blocks: Sequence[Block]) -> str:
    """One ``<details>`` per block: a summary line, and its layers' table when opened."""
    parts = []
    for number_, block in enumerate(blocks):
        chips = _flag_counts(Counter(flag for layer in block.layers for flag in layer.flags))
        summary = (
            f"<span class=bn>{number_}</span><code class=bname title=\"{_t(block.key)}\">"
            f"{_t(block.key)}</code><span class=bcount>{len(block.layers)} "
            f"layer{'s' if len(block.layers) != 1 else ''}</span>"
            f"<span class=bstat>‖δ‖ max {_t(number(block.signal_max()))}, min "
            f"{_t(number(block.signal_min()))}</span><span class=bstat>‖∂L/∂W‖ max "
            f"{_t(number(block.param_grad_max()))}</span><span class=bflags>{chips}</span>")
        rows = (_layer_row(layer, block.short_name(layer)) for layer in block.layers)
        parts.append(f"<details class=block id=block-{number_}><summary>{summary}</summary>"
                     f"{_table(_LAYER_HEAD, rows)}</details>")
    return f"<div id=layers>{''.join(parts)}</div>"


def _flagged_legend(blocks: Sequence[Block] | None, layers: Sequence[LayerReport]) -> str:
    """Flagged blocks (or layers) as a table under the plot, instead of labels on it."""
    if blocks is not None:
        head = ["block", "", "flagged layers", "flags"]
        rows = [
            f"<tr><td class=num>{i}</td><td class=name title=\"{_t(b.key)}\"><code>{_t(b.key)}"
            f"</code></td><td class=num>{len(b.flagged)} of {len(b.layers)}</td><td>"
            + _flag_counts(Counter(f for layer in b.flagged for f in layer.flags))
            + "</td></tr>" for i, b in enumerate(blocks) if b.flagged]
    else:
        head = ["layer", "", "flags"]
        rows = [f"<tr><td class=num>{x}</td><td class=name title=\"{_t(layer.name)}\"><code>"
                f"{_t(layer.name)}</code></td><td>{_flags(layer.flags)}</td></tr>"
                for x, layer in enumerate(sorted(layers, key=lambda item: item.index))
                if layer.flags]
    if not rows:
        return ""
    unit = "blocks" if blocks is not None else "layers"
    table = f"<div id=flagged>{_table(head, rows)}</div>"
    if len(rows) <= _MAX_LEGEND_ROWS:
        return f"<p class=muted>Flagged {unit} (circled on the plot):</p>{table}"
    return (f"<details class=legend><summary>Flagged {unit}: {len(rows)} (circled on the "
            f"plot)</summary>{table}</details>")


def _layer_row(layer: LayerReport, shown_name: str) -> str:
    params = layer.parameters
    grads = "<br>".join(f"<span title=\"{_t(p.name)}\">{_t(_param_label(layer, p))}</span>: "
                        f"{number(p.grad_norm.median)}" for p in params) or MISSING
    ratios = "<br>".join(number(p.grad_to_weight.median) for p in params) or MISSING
    acts = layer.activations
    act = layer.activation
    op = layer.op_type + (f" ({act})" if act and act.lower() != layer.op_type.lower() else "")
    return (
        f"<tr class={'flagged' if layer.flags else 'ok'}><td class=num>{layer.index}</td>"
        f"<td class=name title=\"{_t(layer.name)}\"><code>{_t(shown_name)}</code></td>"
        f"<td>{_t(op)}</td><td class=num>{layer.depth}</td>"
        f"<td class=num>{stat(layer.output_grad_norm, True)}</td><td class=num>{grads}</td>"
        f"<td class=num>{ratios}</td>"
        f"<td class=num>{percent(acts.saturated_fraction) if acts else MISSING}</td>"
        f"<td class=num>{percent(acts.dead_fraction) if acts else MISSING}</td>"
        f"<td>{_flags(layer.flags)}</td></tr>"
    )


def _param_label(layer: LayerReport, param: ParameterStats) -> str:
    """``weight``/``bias`` for a dotted parameter name (the full name is in the title)."""
    name = short_param_name(layer, param)
    return name.rsplit(".", 1)[-1] if "." in name else name


def _cause(cause: Cause) -> str:
    parts = [f"<article class=remedy><h3>{_t(cause.title)} <code class=muted>{_t(cause.id)}"
             f"</code>{_guide(cause)}</h3>"]
    if cause.layers:
        shown = ", ".join(f"<code>{_t(n)}</code>" for n in cause.layers[:_MAX_LISTED_LAYERS])
        more = len(cause.layers) - _MAX_LISTED_LAYERS
        parts.append(f"<p>Layers: {shown}{f' and {more} more' if more > 0 else ''}</p>")
    if cause.evidence:
        parts.append(_any(cause.evidence))
    return "".join(parts) + "</article>"


def _remedy(remedy: Remedy) -> str:
    parts = [f"<article class=remedy><h3>{remedy.rank}. {_t(remedy.title)} "
             f"<code class=muted>{_t(remedy.id)}</code>{_guide(remedy)}</h3>"
             f"<p>{_t(remedy.rationale)}</p>"]
    if remedy.layers:
        shown = ", ".join(f"<code>{_t(n)}</code>" for n in remedy.layers[:_MAX_LISTED_LAYERS])
        more = len(remedy.layers) - _MAX_LISTED_LAYERS
        parts.append(f"<p>Layers: {shown}{f' and {more} more' if more > 0 else ''}</p>")
    params = {k: v for k, v in remedy.params.items() if v != remedy.layers}  # listed above
    if params:
        parts.append(_table(["parameter", "value"], (f"<tr><td>{_t(k)}</td>{_cell(v)}</tr>"
                                                     for k, v in params.items())))
    if remedy.verified is not None:
        v = remedy.verified
        parts.append(f"<p>Verified by re-probing: {_badge(v.status_before)} → "
                     f"{_badge(v.status_after)}</p>")
        keys = list(dict.fromkeys([*v.evidence_before, *v.evidence_after]))
        parts.append(_table(["evidence", "before", "after"], (
            f"<tr><td>{_t(k)}</td>{_cell(v.evidence_before.get(k))}"
            f"{_cell(v.evidence_after.get(k))}</tr>" for k in keys)))
    elif remedy.verification_note:
        parts.append(f"<p class=muted>Not verified: {_t(remedy.verification_note)}</p>")
    if remedy.repairable:
        parts.append("<p class=muted>Repairable: changes initializer values only.</p>")
    return "".join(parts) + "</article>"


def _cell(value: Any) -> str:
    """A ``<td>``: numbers right-aligned, anything else wrapping (see :func:`_any`)."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return f"<td class=num>{_t(_scalar(value))}</td>"
    return f"<td>{_any(value)}</td>"


def _any(value: Any) -> str:
    """HTML for a JSON value of any shape: remedy params and evidence are free-form dicts."""
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        # e.g. {"layers.0.weight": {"scheme": ..., "std": ...}, ...}: one row per key
        columns = list(dict.fromkeys(key for inner in value.values() for key in inner))
        return _table(["", *map(_t, columns)], (
            f"<tr><td><code>{_t(name)}</code></td>{''.join(_cell(inner.get(c)) for c in columns)}"
            "</tr>" for name, inner in value.items()))
    if isinstance(value, Mapping):
        return "<br>".join(f"{_t(k)}: {_any(v)}" for k, v in value.items()) or MISSING
    if isinstance(value, list) and not any(isinstance(v, Mapping | list) for v in value):
        return ", ".join(f"<code>{_t(_scalar(v))}</code>" for v in value) or MISSING
    if isinstance(value, list):
        return f"<code>{_t(json.dumps(value, ensure_ascii=False, default=str))}</code>"
    if isinstance(value, str) and " " in value:
        return _t(value)  # a sentence, not an identifier
    return f"<code>{_t(_scalar(value))}</code>"


def _scalar(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return number(value)
    return str(value)


def _temporal_caption(report: Report) -> str:
    return "; ".join(temporal_line(p) for p in report.temporal)


def _run(report: Report) -> str:
    samples = report.samples
    shapes = ", ".join(f"{printable(k)} {v}" for k, v in samples.input_shapes.items()) or MISSING
    runs = _table(["seed", "loss", "status"],
                  (f"<tr><td class=num>{r.seed}</td><td class=num>{number(r.loss)}</td>"
                   f"<td>{_badge(r.status)}</td></tr>" for r in samples.runs))
    timings = _kv((k.removesuffix("_s"), f"{v:.3f} s")
                  for k, v in report.timings.model_dump().items())
    config = _kv((k, _any(v)) for k, v in _flatten(report.config.model_dump(mode="json")))
    return (
        f"<h3>Samples</h3><p>{samples.count} samples, batch size {samples.batch_size}; "
        f"inputs: {_t(shapes)}</p>{runs}<h3>Timings</h3>{timings}<h3>Config</h3>{config}"
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
