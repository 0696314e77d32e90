"""The report's plots as inline SVG text.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot: pyplot keeps
global figure state and picks a GUI backend, which a server rendering reports in several threads
must not share. The SVG embeds its glyphs as paths, so the page needs no font and makes no request.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from diagnostics.render._format import max_param_grad_norm, printable
from diagnostics.report import Flag, LayerReport, Stat, TemporalProfile

FLOW_PLOT_ID = "gradient-flow-plot"
TEMPORAL_PLOT_ID = "temporal-plot"

_MAX_NAMED_TICKS = 30  # above this many layers, tick labels would overlap: use positions
_MAX_ANNOTATIONS = 10  # flagged layers named on the plot; the table lists them all
_SIGNAL_COLOR = "#1f6feb"
_PARAM_COLOR = "#8250df"
_FLAG_COLOR = "#cf222e"
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def gradient_flow_svg(layers: Sequence[LayerReport]) -> str:
    """Draw ‖δ‖ and the parameter-gradient norms per layer, input to output, on a log scale.

    Args:
        layers: The report's layers, in any order; they are drawn in topological order.

    Returns:
        An ``<svg>`` element with ``id="gradient-flow-plot"``, ready to inline in HTML. Missing
        (None) values are skipped; exact zeros are marked along the bottom edge and non-finite
        backward signals along the top edge, because a log axis cannot show either.
    """
    ordered = sorted(layers, key=lambda layer: layer.index)
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    ax = fig.add_subplot()
    signal = [_median(layer.output_grad_norm) for layer in ordered]
    params = [max_param_grad_norm(layer) for layer in ordered]
    drawn = _series(ax, signal, ordered, _SIGNAL_COLOR,
                    "backward signal ‖δ‖ (median, min–max band)")
    drawn |= _series(ax, params, None, _PARAM_COLOR,
                     "parameter gradient ‖∂L/∂W‖ (largest in layer)")
    if drawn:
        ax.set_yscale("log")
        _mark_flagged(ax, ordered, signal, params)
    else:
        ax.text(0.5, 0.5, "no finite, non-zero gradient norms to plot", transform=ax.transAxes,
                ha="center", va="center", color="#57606a")
    _mark_edges(ax, ordered, signal)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    _x_axis(ax, ordered)
    ax.set_ylabel("gradient norm (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    return _to_svg(fig, FLOW_PLOT_ID, "Gradient flow: gradient norms per layer, input to output")


def temporal_svg(profiles: Sequence[TemporalProfile]) -> str:
    """Draw ‖∂L/∂x_t‖ over time steps for each sequence input (``id="temporal-plot"``)."""
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for profile in profiles:
        points = [(t, v) for t, v in enumerate(profile.grad_norms) if _positive(v)]
        if not points:
            continue
        label = f"{printable(profile.input, 40)} (axis {profile.axis}): {profile.status}"
        line = ax.plot(*zip(*points, strict=True), marker=".", markersize=3, label=label)[0]
        drawn = True
        if profile.effective_horizon is not None:
            # The horizon counts back from the last step, where the loss is taken.
            start = len(profile.grad_norms) - 1 - profile.effective_horizon
            ax.axvline(start, color=line.get_color(), linestyle="--", linewidth=1)
    if drawn:
        ax.set_yscale("log")
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite gradient norms to plot", transform=ax.transAxes,
                ha="center", va="center", color="#57606a")
    ax.set_xlabel("time step t (loss on the last step; dashed: start of the effective horizon)")
    ax.set_ylabel("‖∂L/∂x_t‖ (log scale)")
    ax.grid(True, alpha=0.3)
    return _to_svg(fig, TEMPORAL_PLOT_ID, "Gradient norm per time step of sequence inputs")


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _median(value: Stat | None) -> float | None:
    return None if value is None else value.median


def _series(
    ax: Axes,
    values: list[float | None],
    bands: list[LayerReport] | None,
    color: str,
    label: str,
) -> bool:
    """Plot the positive values joined by a line (gaps skipped); band = ‖δ‖ min/max when given."""
    xs = [x for x, v in enumerate(values) if _positive(v)]
    if not xs:
        return False
    ax.plot(xs, [values[x] for x in xs], color=color, marker="o", markersize=3, linewidth=1.4,
            label=label)
    if bands is not None:
        spread = [(x, s.min, s.max) for x in xs if (s := bands[x].output_grad_norm) is not None
                  and _positive(s.min) and _positive(s.max)]
        if spread:
            bx, lo, hi = zip(*spread, strict=True)
            ax.fill_between(bx, lo, hi, color=color, alpha=0.18, linewidth=0)
    return True


def _mark_edges(ax: Axes, layers: list[LayerReport], signal: list[float | None]) -> None:
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    zeros = [x for x, v in enumerate(signal) if v == 0]
    if zeros:
        ax.plot(zeros, [0.02] * len(zeros), linestyle="none", marker="v", color="#57606a",
                transform=edge, label="‖δ‖ = 0 (exactly)", clip_on=False)
    nonfinite = [x for x, layer in enumerate(layers)
                 if layer.output_grad_nonfinite_count or Flag.NON_FINITE in layer.flags]
    if nonfinite:
        ax.plot(nonfinite, [0.98] * len(nonfinite), linestyle="none", marker="X",
                color=_FLAG_COLOR, transform=edge, label="non-finite values", clip_on=False)


def _mark_flagged(
    ax: Axes, layers: list[LayerReport], signal: list[float | None], params: list[float | None]
) -> None:
    marks = []
    for x, layer in enumerate(layers):
        if not layer.flags:
            continue
        y = signal[x] if _positive(signal[x]) else params[x]
        if _positive(y):
            marks.append((x, y, layer))
    if not marks:
        return
    ax.plot([m[0] for m in marks], [m[1] for m in marks], linestyle="none", marker="o",
            markersize=9, markerfacecolor="none", markeredgecolor=_FLAG_COLOR,
            markeredgewidth=1.6, label="flagged layer (named in red)")
    if len(layers) <= _MAX_NAMED_TICKS:
        return  # the tick labels name every layer; _x_axis colours the flagged ones
    step = max(1, math.ceil(len(marks) / _MAX_ANNOTATIONS))  # spread the names along the axis
    for i, (x, y, layer) in enumerate(marks[::step]):
        above = i % 2 == 0 and x > 0.1 * len(layers)  # labels grow leftwards when above
        ax.annotate(printable(layer.name, 28), (x, y), xytext=(-5, 8) if above else (5, -12),
                    textcoords="offset points", ha="right" if above else "left", fontsize=7,
                    color=_FLAG_COLOR, parse_math=False)  # names are user data: no mathtext
    if step > 1:
        ax.text(0.99, 0.02, f"{len(marks)} flagged layers, one in {step} named (see the table)",
                transform=ax.transAxes, ha="right", fontsize=7, color=_FLAG_COLOR)


def _x_axis(ax: Axes, layers: list[LayerReport]) -> None:
    ax.set_xlabel("layer, input → output (topological order)")
    if not layers:
        return
    ax.set_xlim(-0.5, len(layers) - 0.5)
    if len(layers) <= _MAX_NAMED_TICKS:
        ticks = ax.set_xticks(range(len(layers)), [printable(layer.name, 18) for layer in layers],
                              rotation=45, ha="right", fontsize=7, parse_math=False)
        for tick, layer in zip(ticks, layers, strict=True):
            if layer.flags:
                tick.label1.set_color(_FLAG_COLOR)
                tick.label1.set_fontweight("bold")


def _to_svg(fig: Figure, element_id: str, label: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: invalid inside HTML
    # Two figures on one page both define glyphs like id="DejaVuSans-30": prefix every id.
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{element_id}-\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{element_id}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{element_id}-\1)", svg)
    # Scale with the page: keep the viewBox, let the width follow the container.
    return re.sub(
        r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
        rf'<svg id="{element_id}" role="img" aria-label="{label}" \1width="100%"',
        svg,
        count=1,
    )
