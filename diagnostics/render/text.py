"""The report as readable terminal text (the CLI's default output), drawn with rich.

Names from the model are always passed as :class:`rich.text.Text`, never as markup strings, so a
layer called ``[bold]x`` prints as itself; control characters are made visible first because rich
passes ESC through and a crafted name could otherwise drive the user's terminal.
"""

from __future__ import annotations

import io
import json
from collections import Counter
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
from diagnostics.render.blocks import Block, group_layers, worth_grouping
from diagnostics.report import Evidence, LayerReport, Remedy, Report, Status

_STATUS_STYLE = {Status.HEALTHY: "bold green", Status.VANISHING: "bold yellow",
                 Status.EXPLODING: "bold red", Status.INCONCLUSIVE: "bold magenta"}
_MAX_LISTED_LAYERS = 8


def render_text(report: Report, color: bool = False, width: int = 120) -> str:  # noqa: C901
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
    blocks = group_layers(report.layers)
    if worth_grouping(blocks, report.layers):
        console.print(_block_table(blocks, width), soft_wrap=True)
        console.print(_layer_table(report.layers, width, blocks), soft_wrap=True)
    else:
        console.print(_layer_table(report.layers, width), soft_wrap=True)
    if report.causes:
        console.print(Text("Causes", style="bold"))
        for cause in report.causes:
            line = Text(f"- {printable(cause.title)}  [{printable(cause.id)}]")
            if cause.doc:  # None in reports older than the guide
                line.append(f"  guide: {printable(cause.doc)}", style="dim")
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
    style = _STATUS_STYLE.get(verdict.status, "bold")
    status = Text.assemble(("Verdict: ", "bold"), (verdict.status.value.upper(), style))
    if verdict.flags:
        status.append(f"  [{', '.join(verdict.flags)}]", style="red")
    lines = [status, Text(printable(verdict.summary)), _evidence(verdict.evidence)]
    fired = [r for r in verdict.evidence.rules if r.fired]
    lines += [Text(f"  fired: {printable(r.rule)}: {number(r.value)} vs {number(r.threshold)}"
                   f" ({printable(r.detail)})"
                   + (f"  guide: {printable(r.doc)}" if r.doc else ""),
                   style="yellow") for r in fired]
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
_OPTIONAL = (8, 9)  # saturated and dead fractions: left out when no layer has them
_MAX_OP, _MAX_FLAGS, _MIN_NAME = 14, 26, 12


_BLOCK_HEAD = ("", "#", "block", "layers", "‖δ‖ max", "‖δ‖ min", "‖∂L/∂W‖ max", "flags")


def _block_table(blocks: Sequence[Block], width: int) -> Text:
    """One row per block: the trend over depth without the zigzag inside each block."""
    rows = []
    for number_, block in enumerate(blocks):
        counts = Counter(flag for layer in block.layers for flag in layer.flags)
        rows.append(([
            "!" if block.flagged else "", str(number_), printable(block.key),
            str(len(block.layers)), number(block.signal_max()), number(block.signal_min()),
            number(block.param_grad_max()),
            ", ".join(f"{flag} ×{n}" if n > 1 else str(flag) for flag, n in counts.items())],
            bool(block.flagged)))
    text = Text()
    text.append(f"{len(blocks)} blocks (layers grouped by module path), input → output; ‖δ‖ max "
                "is the block's strongest backward signal\n", style="bold")
    _append_rows(text, _BLOCK_HEAD, rows, width, right={1, 3, 4, 5, 6}, folded=(2, 7),
                 caps={7: 40})
    return text


def _layer_table(layers: Sequence[LayerReport], width: int,
                 blocks: Sequence[Block] | None = None) -> Text:
    """A fixed-width table drawn by hand; with ``blocks``, a header line before each block and
    names shortened to their path inside it.

    rich's Table measures every cell through its renderable protocol, about 1.5 ms a row: too
    slow for the 500-layer models the CLI meets, so columns are sized once here and long names fold.
    """
    if not layers:
        return Text("No layers were measured.", style="dim")
    if blocks:
        rows: list[tuple[list[str], bool] | str] = []
        for number_, block in enumerate(blocks):
            rows.append(f"── block {number_}: {printable(block.key)}")
            rows += [_layer_cells(layer, block.short_name(layer)) for layer in block.layers]
    else:
        rows = [_layer_cells(layer) for layer in sorted(layers, key=lambda item: item.index)]
    text = Text()
    text.append(f"{len(layers)} layers, input → output ('!' = flagged)\n", style="bold")
    _append_rows(text, _HEAD, rows, width, right=_RIGHT_ALIGNED, folded=(_NAME, _OP, _FLAGS),
                 caps={_OP: _MAX_OP, _FLAGS: _MAX_FLAGS}, optional=_OPTIONAL)
    return text


def _append_rows(text: Text, head: Sequence[str], rows: Sequence[tuple[list[str], bool] | str],
                 width: int, right: set[int] | frozenset[int], folded: tuple[int, ...],
                 caps: dict[int, int], optional: tuple[int, ...] = ()) -> None:
    """Size the columns once, then write the header, a rule and the rows (long cells fold).

    The first folded column is the name, which takes the width the others leave; an
    ``optional`` column whose cells are all missing is left out; a row given as a plain string
    is a section line written as is.
    """
    cells_only = [row[0] for row in rows if not isinstance(row, str)]
    empty = [i for i in optional
             if cells_only and all(cells[i] == MISSING for cells in cells_only)]
    if empty:  # e.g. no activation statistics at all: give the names the room
        keep = [i for i in range(len(head)) if i not in empty]
        renumber = {old: new for new, old in enumerate(keep)}
        head = [head[i] for i in keep]
        rows = [row if isinstance(row, str) else ([row[0][i] for i in keep], row[1])
                for row in rows]
        cells_only = [row[0] for row in rows if not isinstance(row, str)]
        right = {renumber[i] for i in right if i in renumber}
        folded = tuple(renumber[i] for i in folded)
        caps = {renumber[i]: cap for i, cap in caps.items()}
    widths = [max(cell_len(h), *(cell_len(row[i]) for row in cells_only)) if cells_only
              else cell_len(h) for i, h in enumerate(head)]
    for column, cap in caps.items():
        widths[column] = min(widths[column], cap)
    name = folded[0]
    others = sum(widths) - widths[name] + 2 * (len(widths) - 1)
    widths[name] = max(_MIN_NAME, min(widths[name], width - others))
    text.append(_line(head, widths, right) + "\n", style="bold")
    text.append("─" * min(width, sum(widths) + 2 * (len(widths) - 1)) + "\n", style="dim")
    for row in rows:
        if isinstance(row, str):
            text.append(row + "\n", style="bold dim")
            continue
        cells, flagged = row
        parts = {i: chop_cells(cells[i], widths[i]) or [""] for i in folded}
        for k in range(max(len(p) for p in parts.values())):
            line = [c if k == 0 else "" for c in cells]
            for i, pieces in parts.items():
                line[i] = pieces[k] if k < len(pieces) else ""
            text.append(_line(line, widths, right) + "\n", style="red" if flagged else "")


def _layer_cells(layer: LayerReport, shown_name: str | None = None) -> tuple[list[str], bool]:
    acts = layer.activations
    cells = [
        "!" if layer.flags else "", str(layer.index), printable(shown_name or layer.name),
        printable(layer.op_type), str(layer.depth), stat(layer.output_grad_norm),
        number(max_param_grad_norm(layer)), number(max_grad_to_weight(layer)),
        percent(acts.saturated_fraction) if acts else MISSING,
        percent(acts.dead_fraction) if acts else MISSING, ", ".join(layer.flags),
    ]
    return cells, bool(layer.flags)


def _line(cells: Sequence[str], widths: Sequence[int],
          right: set[int] | frozenset[int] = _RIGHT_ALIGNED) -> str:
    padded = []
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        pad = " " * max(width - cell_len(cell), 0)
        padded.append(pad + cell if i in right else cell + pad)
    return "  ".join(padded).rstrip()


def _remedy(remedy: Remedy) -> Group:
    title = Text.assemble((f"{remedy.rank}. {printable(remedy.title)}", "bold"),
                          (f"  [{printable(remedy.id)}]", "dim"))
    if remedy.doc:  # None in reports older than the guide
        title.append(f"  guide: {printable(remedy.doc)}", style="dim")
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
        body.append(v.status_before.value, style=_STATUS_STYLE.get(v.status_before, "bold"))
        body.append(" → ")
        body.append(v.status_after.value, style=_STATUS_STYLE.get(v.status_after, "bold"))
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
