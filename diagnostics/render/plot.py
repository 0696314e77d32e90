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
from dataclasses import dataclass
from typing import TypeGuard

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from diagnostics.render._format import max_param_grad_norm, printable, where_steps
from diagnostics.render.blocks import Block
from diagnostics.report import Flag, LayerReport, Stat, TemporalProfile

FLOW_PLOT_ID = "gradient-flow-plot"
TEMPORAL_PLOT_ID = "temporal-plot"

_MAX_NAMED_TICKS = 30  # above this many layers, tick labels would overlap: use positions
_SIGNAL_COLOR = "#1f6feb"
_PARAM_COLOR = "#8250df"
_FLAG_COLOR = "#cf222e"
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


@dataclass(frozen=True)
class _Point:
    """One x position of the flow plot: a layer, or a block of layers."""

    label: str
    signal: float | None
    low: float | None   # band: min–max over samples (layers) or over the block's layers
    high: float | None
    param: float | None
    flagged: bool
    zero: bool = False
    nonfinite: bool = False


def gradient_flow_svg(layers: Sequence[LayerReport], blocks: Sequence[Block] | None = None) -> str:
    """Draw ‖δ‖ and the parameter-gradient norms, input to output, on a log scale.

    Args:
        layers: The report's layers, in any order; they are drawn in topological order.
        blocks: When given, one point per block instead: the block's largest ‖δ‖ (its strongest
            path, the skip path of a residual block), a band from its smallest to its largest
            ‖δ‖, and its largest parameter-gradient norm.

    Returns:
        An ``<svg>`` element with ``id="gradient-flow-plot"``, ready to inline in HTML. Missing
        (None) values are skipped; exact zeros are marked along the bottom edge and non-finite
        backward signals along the top edge, because a log axis cannot show either. No label is
        written inside the axes (the page lists flagged layers), and the legend sits above them,
        so no text overlaps another.
    """
    points = _block_points(blocks) if blocks else _layer_points(layers)
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax = fig.add_subplot()
    unit = "block" if blocks else "layer"
    signal = [p.signal for p in points]
    drawn = _series(ax, signal, [(p.low, p.high) for p in points], _SIGNAL_COLOR,
                    "backward signal ‖δ‖ " + ("(block max, band: block min–max)" if blocks
                                              else "(median, band: min–max over samples)"))
    drawn |= _series(ax, [p.param for p in points], None, _PARAM_COLOR,
                     f"parameter gradient ‖∂L/∂W‖ (largest in {unit})")
    if drawn:
        ax.set_yscale("log")
        _mark_flagged(ax, points, unit)
    else:
        ax.text(0.5, 0.5, "no finite, non-zero gradient norms to plot", transform=ax.transAxes,
                ha="center", va="center", color="#57606a")
    _mark_edges(ax, points)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(handles), 3),
                   fontsize=8, frameon=False)
    _x_axis(ax, points, unit)
    ax.set_ylabel("gradient norm (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    return _to_svg(fig, FLOW_PLOT_ID, "Gradient flow: gradient norms per layer, input to output")


def _layer_points(layers: Sequence[LayerReport]) -> list[_Point]:
    points = []
    for layer in sorted(layers, key=lambda item: item.index):
        grad = layer.output_grad_norm
        points.append(_Point(
            label=layer.name, signal=_median(grad), low=grad.min if grad else None,
            high=grad.max if grad else None, param=max_param_grad_norm(layer),
            flagged=bool(layer.flags), zero=_median(grad) == 0,
            nonfinite=bool(layer.output_grad_nonfinite_count or Flag.NON_FINITE in layer.flags)))
    return points


def _block_points(blocks: Sequence[Block]) -> list[_Point]:
    return [_Point(
        label=block.label, signal=block.signal_max(), low=block.signal_min(),
        high=block.signal_max(), param=block.param_grad_max(), flagged=bool(block.flagged),
        zero=not block.signals() and any(_median(layer.output_grad_norm) == 0
                                         for layer in block.layers),
        nonfinite=any(layer.output_grad_nonfinite_count or Flag.NON_FINITE in layer.flags
                      for layer in block.layers)) for block in blocks]


def temporal_svg(profiles: Sequence[TemporalProfile]) -> str:
    """Draw ‖∂L/∂x_t‖ over time steps for each sequence input (``id="temporal-plot"``)."""
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for profile in profiles:
        points = [(t, v) for t, v in enumerate(profile.grad_norms) if _positive(v)]
        if not points:
            continue
        label = f"{printable(profile.input, 40)} ({where_steps(profile)}): {profile.status}"
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


def _positive(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value) and value > 0


def _median(value: Stat | None) -> float | None:
    return None if value is None else value.median


def _series(
    ax: Axes,
    values: list[float | None],
    bands: list[tuple[float | None, float | None]] | None,
    color: str,
    label: str,
) -> bool:
    """Plot the positive values joined by a line (gaps skipped), with a band when given."""
    shown = [(x, v) for x, v in enumerate(values) if _positive(v)]
    if not shown:
        return False
    xs = [x for x, _ in shown]
    ax.plot(xs, [v for _, v in shown], color=color, marker="o", markersize=3, linewidth=1.4,
            label=label)
    if bands is not None:
        spread = [(x, lo, hi) for x in xs if _positive(lo := bands[x][0])
                  and _positive(hi := bands[x][1])]
        if spread:
            ax.fill_between([x for x, _, _ in spread], [lo for _, lo, _ in spread],
                            [hi for _, _, hi in spread], color=color, alpha=0.18, linewidth=0)
    return True


def _mark_edges(ax: Axes, points: list[_Point]) -> None:
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    zeros = [x for x, p in enumerate(points) if p.zero]
    if zeros:
        ax.plot(zeros, [0.02] * len(zeros), linestyle="none", marker="v", color="#57606a",
                transform=edge, label="‖δ‖ = 0 (exactly)", clip_on=False)
    nonfinite = [x for x, p in enumerate(points) if p.nonfinite]
    if nonfinite:
        ax.plot(nonfinite, [0.98] * len(nonfinite), linestyle="none", marker="X",
                color=_FLAG_COLOR, transform=edge, label="non-finite values", clip_on=False)


def _mark_flagged(ax: Axes, points: list[_Point], unit: str) -> None:
    marks = [(x, y) for x, p in enumerate(points) if p.flagged
             and _positive(y := p.signal if _positive(p.signal) else p.param)]
    if not marks:
        return
    ax.plot([m[0] for m in marks], [m[1] for m in marks], linestyle="none", marker="o",
            markersize=9, markerfacecolor="none", markeredgecolor=_FLAG_COLOR,
            markeredgewidth=1.6, label=("block with flagged layers" if unit == "block" else
                                        "flagged layer") + " (listed below the plot)")


def _x_axis(ax: Axes, points: list[_Point], unit: str) -> None:
    if not points:
        ax.set_xlabel(f"{unit}, input → output")
        return
    ax.set_xlim(-0.5, len(points) - 0.5)
    if len(points) <= _MAX_NAMED_TICKS:
        # Vertical labels: each is one line of text tall across, so neighbours never touch.
        ticks = ax.set_xticks(range(len(points)), [printable(p.label, 18) for p in points],
                              rotation=90, fontsize=7, parse_math=False)
        for tick, point in zip(ticks, points, strict=True):
            if point.flagged:
                tick.label1.set_color(_FLAG_COLOR)
                tick.label1.set_fontweight("bold")
        flagged = " (flagged in red)" if any(p.flagged for p in points) else ""
        ax.set_xlabel(f"{unit}, input → output{flagged}")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
        ax.set_xlabel(f"{unit} number, input → output (topological order; see the table)")


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
