"""Number and name formatting shared by the HTML and text renderers: both show the same digits."""

from __future__ import annotations

import math
import unicodedata

from diagnostics.report import LayerReport, ParameterStats, SourceReport, Stat, TemporalProfile

MISSING = "—"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters made visible and an optional length cap.

    Layer names come from uploaded files: an ESC byte would let a name drive the user's terminal,
    and control characters are invalid in the SVG text matplotlib writes.
    """
    cleaned = "".join(
        f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in text
    )
    if limit is not None and len(cleaned) > limit:
        return cleaned[: max(limit - 1, 1)] + "…"
    return cleaned


def number(value: float | None) -> str:
    """Three significant digits; scientific notation outside [1e-3, 1e4)."""
    if value is None or not math.isfinite(value):
        return MISSING
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        text = f"{value:.3g}"
        return f"{value:.0f}" if "e" in text else text  # .3g writes 1234 as 1.23e+03
    return f"{value:.2e}"


def stat(value: Stat | None, spread: bool = False) -> str:
    """The median, with ``[min, max]`` after it when ``spread`` and the two differ."""
    if value is None:
        return MISSING
    text = number(value.median)
    if spread and value.min is not None and value.max is not None and value.min != value.max:
        text += f" [{number(value.min)}, {number(value.max)}]"
    return text


def percent(value: Stat | None) -> str:
    if value is None or value.median is None:
        return MISSING
    return f"{100 * value.median:.0f} %"


def largest(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


def max_param_grad_norm(layer: LayerReport) -> float | None:
    """The largest median ‖∂L/∂W‖ among the layer's parameters: its weight-gradient scale."""
    return largest([p.grad_norm.median for p in layer.parameters])


def max_grad_to_weight(layer: LayerReport) -> float | None:
    return largest([p.grad_to_weight.median for p in layer.parameters])


def short_param_name(layer: LayerReport, param: ParameterStats) -> str:
    """``layers.3.weight`` → ``weight`` inside layer ``layers.3``; ONNX names stay whole."""
    prefix = layer.name + "."
    return param.name[len(prefix) :] if param.name.startswith(prefix) else param.name


def source_line(source: SourceReport) -> str:
    """``name · kind · sha256 0123456789ab · opset 17`` (absent parts left out)."""
    parts = [printable(source.name) if source.name else "(unnamed)", printable(source.kind)]
    parts.append(f"sha256 {source.sha256[:12]}")
    if source.opset is not None:
        parts.append(f"opset {source.opset}")
    return " · ".join(parts)


def where_steps(profile: TemporalProfile) -> str:
    """``axis 1``, or ``one call per step`` for a cell a Python loop calls (axis -1)."""
    return f"axis {profile.axis}" if profile.axis >= 0 else "one call per step"


def temporal_line(profile: TemporalProfile) -> str:
    """``x (axis 1): vanishing, first/last step 1e-05, decay per step 0.8, effective horizon
    12 of 40 steps``."""
    horizon = MISSING if profile.effective_horizon is None else str(profile.effective_horizon)
    return (f"{printable(profile.input)} ({where_steps(profile)}): {profile.status}, first/last "
            f"step {number(profile.first_to_last_ratio)}, decay per step "
            f"{number(profile.decay_per_step)}, effective horizon {horizon} of "
            f"{len(profile.grad_norms)} steps")
