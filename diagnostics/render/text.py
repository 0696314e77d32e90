"""The report as readable terminal text (the CLI's default output), drawn with rich.

Names from the model are always passed as :class:`rich.text.Text`, never as markup strings, so a
layer called ``[bold]x`` prints as itself; control characters are made visible first because rich
passes ESC through and a crafted name could otherwise drive the user's terminal.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from rich import box
from rich.cells import cell_len, chop_cells
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.text import Text

from diagnostics.render._format import (
    MISSING,
    max_grad_to_weight,
    max_param_grad_norm,
    number,
    percent,
    printable,
    source_line,
    stat,
    temporal_line,
)
from diagnostics.report import Evidence, LayerReport, Remedy, Report, Status

_STATUS_STYLE = {Status.HEALTHY: "bold green", Status.VANISHING: "bold yellow",
                 Status.EXPLODING: "bold red", Status.INCONCLUSIVE: "bold magenta"}
_MAX_LISTED_LAYERS = 8


def render_text(report: Report, color: bool = False, width: int = 120) -> str:
    """Render a report as plain or ANSI-coloured text.

    Args:
        report: The finished diagnosis.
        color: Emit ANSI colour codes; the caller decides (e.g. only when stdout is a TTY).
        width: Line width in characters; long layer names wrap inside their column.

    Returns:
        The header with the verdict, the per-layer table (flagged rows marked ``!``), the ranked
        remedies, temporal profiles and notes when present, and the timings, ending in a newline.
    """
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=color, no_color=not color,
        color_system="standard" if color else None, highlight=False, emoji=False, markup=False,
        legacy_windows=False,
    )
    console.print(_header(report))
    console.print(_layer_table(report.layers, width), soft_wrap=True)
    if report.causes:
        console.print(Text("Causes", style="bold"))
        for cause in report.causes:
            line = Text(f"- {printable(cause.title)}  [{printable(cause.id)}]")
            if cause.layers:
                shown = ", ".join(printable(n) for n in cause.layers[:_MAX_LISTED_LAYERS])
                more = len(cause.layers) - _MAX_LISTED_LAYERS
                line.append(f"\n  layers: {shown}{f' and {more} more' if more > 0 else ''}",
                            style="dim")
            console.print(line)
    if report.remedies:
        console.print(Text("Remedies", style="bold"))
        for remedy in sorted(report.remedies, key=lambda r: r.rank):
            console.print(_remedy(remedy))
    for profile in report.temporal:
        console.print(Text(f"Temporal: {temporal_line(profile)}"))
    for note in report.notes:
        console.print(Text(f"Note: {printable(note)}", style="dim"))
    t = report.timings
    console.print(Text(
        f"Timings (s): load {t.load_s:.2f} · inputs {t.inputs_s:.2f} · probe {t.probe_s:.2f} · "
        f"verdict {t.verdict_s:.2f} · remedies {t.remedies_s:.2f} · verification "
        f"{t.verification_s:.2f} · total {t.total_s:.2f}", style="dim"))
    if color:
        return buffer.getvalue()
    # rich pads every line of a block to the block's width; trailing blanks only get in the way
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _header(report: Report) -> Panel:
    verdict = report.verdict
    status = Text.assemble(("Verdict: ", "bold"),
                           (verdict.status.value.upper(), _STATUS_STYLE[verdict.status]))
    if verdict.flags:
        status.append(f"  [{', '.join(verdict.flags)}]", style="red")
    lines = [status, Text(printable(verdict.summary)), _evidence(verdict.evidence)]
    fired = [r for r in verdict.evidence.rules if r.fired]
    lines += [Text(f"  fired: {printable(r.rule)}: {number(r.value)} vs {number(r.threshold)}"
                   f" ({printable(r.detail)})", style="yellow") for r in fired]
    return Panel(Group(*lines), title=Text(f"GradDoctor · {source_line(report.source)}"),
                 title_align="left", box=box.ROUNDED)


def _evidence(ev: Evidence) -> Text:
    parts = [f"backward-signal ratio {stat(ev.backward_signal_ratio, True)}",
             f"gain/layer {number(ev.per_layer_gain)}",
             f"weight-grad ratio {stat(ev.weight_grad_ratio)}"]
    if ev.max_grad_to_weight is not None:
        param = ev.max_grad_to_weight_parameter
        where = f" ({printable(param)})" if param else ""
        parts.append(f"max grad/weight {number(ev.max_grad_to_weight)}{where}")
    if ev.nonfinite_count:
        first = ev.first_nonfinite_forward or ev.first_nonfinite_backward
        where = f" first at {printable(first)}" if first else ""
        parts.append(f"non-finite {ev.nonfinite_count}{where}")
    return Text(" · ".join(parts), style="dim")


_HEAD = ("", "#", "layer", "op", "depth", "‖δ‖", "‖∂L/∂W‖ max", "grad/W max", "sat.", "dead",
         "flags")
_RIGHT_ALIGNED = frozenset({1, 4, 5, 6, 7, 8, 9})
_NAME, _OP, _FLAGS = 2, 3, 10
_MAX_OP, _MAX_FLAGS, _MIN_NAME = 16, 24, 12


def _layer_table(layers: Sequence[LayerReport], width: int) -> Text:
    """A fixed-width table drawn by hand.

    rich's Table measures every cell through its renderable protocol, about 1.5 ms a row: too
    slow for the 500-layer models the CLI meets, so columns are sized once here and long names fold.
    """
    if not layers:
        return Text("No layers were measured.", style="dim")
    rows = [_layer_cells(layer) for layer in sorted(layers, key=lambda item: item.index)]
    widths = [max(cell_len(head), *(cell_len(row[i]) for row, _ in rows))
              for i, head in enumerate(_HEAD)]
    widths[_OP] = min(widths[_OP], _MAX_OP)
    widths[_FLAGS] = min(widths[_FLAGS], _MAX_FLAGS)
    others = sum(widths) - widths[_NAME] + 2 * (len(widths) - 1)
    widths[_NAME] = max(_MIN_NAME, min(widths[_NAME], width - others))
    text = Text()
    text.append(f"{len(layers)} layers, input → output ('!' = flagged)\n", style="bold")
    text.append(_line(_HEAD, widths) + "\n", style="bold")
    text.append("─" * min(width, sum(widths) + 2 * (len(widths) - 1)) + "\n", style="dim")
    for cells, flagged in rows:
        folded = {i: chop_cells(cells[i], widths[i]) or [""] for i in (_NAME, _OP, _FLAGS)}
        for k in range(max(len(parts) for parts in folded.values())):
            line = [c if k == 0 else "" for c in cells]
            for i, parts in folded.items():
                line[i] = parts[k] if k < len(parts) else ""
            text.append(_line(line, widths) + "\n", style="red" if flagged else "")
    return text


def _layer_cells(layer: LayerReport) -> tuple[list[str], bool]:
    acts = layer.activations
    cells = [
        "!" if layer.flags else "", str(layer.index), printable(layer.name),
        printable(layer.op_type), str(layer.depth), stat(layer.output_grad_norm),
        number(max_param_grad_norm(layer)), number(max_grad_to_weight(layer)),
        percent(acts.saturated_fraction) if acts else MISSING,
        percent(acts.dead_fraction) if acts else MISSING, ", ".join(layer.flags),
    ]
    return cells, bool(layer.flags)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = []
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        pad = " " * max(width - cell_len(cell), 0)
        padded.append(pad + cell if i in _RIGHT_ALIGNED else cell + pad)
    return "  ".join(padded).rstrip()


def _remedy(remedy: Remedy) -> Group:
    title = Text.assemble((f"{remedy.rank}. {printable(remedy.title)}", "bold"),
                          (f"  [{printable(remedy.id)}]", "dim"))
    body = Text(printable(remedy.rationale))
    if remedy.layers:
        shown = ", ".join(printable(name) for name in remedy.layers[:_MAX_LISTED_LAYERS])
        more = len(remedy.layers) - _MAX_LISTED_LAYERS
        body.append(f"\nlayers: {shown}" + (f" and {more} more" if more > 0 else ""))
    for key, value in remedy.params.items():
        if value == remedy.layers:
            continue  # already listed above
        body.append(f"\n{printable(str(key))}: {_brief(value)}", style="cyan")
    if remedy.verified is not None:
        v = remedy.verified
        body.append("\nverified: ")
        body.append(v.status_before.value, style=_STATUS_STYLE[v.status_before])
        body.append(" → ")
        body.append(v.status_after.value, style=_STATUS_STYLE[v.status_after])
    elif remedy.verification_note:
        body.append(f"\nnot verified: {printable(remedy.verification_note)}", style="dim")
    return Group(title, Padding(body, (0, 0, 0, 3), expand=False))


def _brief(value: object) -> str:
    """One line for a remedy parameter; the JSON output has it whole."""
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        more = len(value) - _MAX_LISTED_LAYERS
        shown = ", ".join(printable(str(v)) for v in value[:_MAX_LISTED_LAYERS])
        return shown + (f" and {more} more" if more > 0 else "")
    if isinstance(value, float):
        return number(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return printable(text, 160)
