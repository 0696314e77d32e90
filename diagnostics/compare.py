"""Two reports -> what changed in the gradients: per-layer backward signal, parameter gradients,
verdict, and whether gradient health got worse beyond a factor (what a CI gate needs).

Pure: works on :class:`~diagnostics.report.Report` objects (e.g. loaded from JSON), imports no
torch, so the service's API process can compare two stored jobs.

The gate looks at each layer's backward signal *relative to a reference layer*, the shallowest
parametric layer (closest to the loss) that both reports measured:
r_l = ‖δ_l‖ / ‖δ_ref‖. Scaling the loss or the output layer moves every ‖δ_l‖ alike and leaves
r_l alone; a change that makes the signal die or grow over depth moves r_l away from 1. A layer
*regresses* when |log10 r_l| grew by more than log10(factor) — its signal moved away from the
reference's by more than ``factor`` — or when its signal was finite and non-zero before and is
zero or non-finite after. The ratio is raw (not width-corrected like the verdict's): both reports
measure the same layer, so its width cancels unless the change altered it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeGuard

from pydantic import BaseModel, ConfigDict, Field

from diagnostics.report import LayerReport, Report, Stat, Status

DEFAULT_FACTOR = 10.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LayerChange(_Model):
    """One layer present in both reports (matched by name)."""

    name: str
    op_type: str
    index: int = Field(description="Position in the AFTER report's topological order.")
    signal_before: float | None = Field(description="‖∂L/∂output‖ before (median).")
    signal_after: float | None
    signal_change: float | None = Field(description="signal_after / signal_before.")
    relative_before: float | None = Field(
        description="‖δ_layer‖ / ‖δ_reference‖ before (1 = the reference layer's signal).")
    relative_after: float | None
    drift: float | None = Field(
        description="How many times farther from 1 relative_after is than relative_before "
        "(10^(|log10 after| - |log10 before|)); > 1 means further from the reference.")
    regressed: bool
    reason: str | None = None


class ParameterChange(_Model):
    """One parameter present in both reports (matched by name)."""

    name: str
    layer: str = Field(description="The layer that lists it in the AFTER report.")
    grad_norm_before: float | None
    grad_norm_after: float | None
    change: float | None = Field(description="grad_norm_after / grad_norm_before.")


class VerdictChange(_Model):
    status_before: Status
    status_after: Status
    ratio_before: float | None = Field(description="backward_signal_ratio median before.")
    ratio_after: float | None
    summary_before: str
    summary_after: str


class Comparison(_Model):
    """What changed between two diagnoses of (versions of) a model."""

    factor: float = Field(description="The regression factor the gate used.")
    reference_layer: str | None = Field(
        description="The layer the relative signals are taken against (None: no common layer "
        "with a finite, non-zero signal).")
    verdict: VerdictChange
    worse: bool = Field(description="Gradient health got worse beyond the factor (the gate).")
    reasons: list[str] = Field(default_factory=list,
                               description="Why ``worse``, one sentence each.")
    layers: list[LayerChange] = Field(default_factory=list)
    parameters: list[ParameterChange] = Field(default_factory=list)
    only_before: list[str] = Field(default_factory=list, description="Layers only BEFORE has.")
    only_after: list[str] = Field(default_factory=list, description="Layers only AFTER has.")


def compare_reports(before: Report, after: Report, factor: float = DEFAULT_FACTOR) -> Comparison:
    """Compare two reports layer by layer and decide whether gradient health got worse.

    Args:
        before: The baseline report (e.g. from the main branch).
        after: The report of the changed model.
        factor: A layer regresses when its backward signal relative to the reference layer moved
            away from 1 by more than this factor; must be > 1.

    Returns:
        The comparison; ``worse`` is true when a layer regressed or the verdict went from healthy
        to anything else.

    Raises:
        ValueError: ``factor`` is not a finite number > 1.
    """
    if not (math.isfinite(factor) and factor > 1):
        raise ValueError(f"factor must be a finite number > 1, got {factor}")
    old = {layer.name: layer for layer in before.layers}
    new = {layer.name: layer for layer in after.layers}
    common = [layer for layer in sorted(after.layers, key=lambda item: item.index)
              if layer.name in old]
    reference = _reference(before, after, old, new)
    ref_before = _signal(old[reference]) if reference else None
    ref_after = _signal(new[reference]) if reference else None
    limit = math.log10(factor)
    changes = [_layer_change(old[layer.name], layer, ref_before, ref_after, limit)
               for layer in common]
    verdict = VerdictChange(
        status_before=before.verdict.status, status_after=after.verdict.status,
        ratio_before=_median(before.verdict.evidence.backward_signal_ratio),
        ratio_after=_median(after.verdict.evidence.backward_signal_ratio),
        summary_before=before.verdict.summary, summary_after=after.verdict.summary)
    reasons = []
    if verdict.status_before == Status.HEALTHY and verdict.status_after != Status.HEALTHY:
        reasons.append(f"the verdict went from healthy to {verdict.status_after.value}")
    reasons += [f"{change.name}: {change.reason}" for change in changes if change.regressed]
    return Comparison(
        factor=factor, reference_layer=reference, verdict=verdict, worse=bool(reasons),
        reasons=reasons, layers=changes, parameters=list(_parameter_changes(before, after)),
        only_before=[name for name in old if name not in new],
        only_after=[name for name in new if name not in old])


def _reference(before: Report, after: Report, old: dict[str, LayerReport],
               new: dict[str, LayerReport]) -> str | None:
    """The verdict's shallowest layer when both reports measured it, else the common layer
    closest to the loss (smallest depth in AFTER) with a usable signal in both."""
    def usable(name: str | None) -> bool:
        return bool(name) and name in old and name in new and \
            _positive(_signal(old[name])) and _positive(_signal(new[name]))

    for name in (after.verdict.evidence.shallowest_layer, before.verdict.evidence.shallowest_layer):
        if usable(name):
            return name
    ranked = sorted((layer for layer in after.layers if usable(layer.name)),
                    key=lambda layer: (not layer.parameters, layer.depth, -layer.index))
    return ranked[0].name if ranked else None


def _layer_change(old: LayerReport, new: LayerReport, ref_before: float | None,
                  ref_after: float | None, limit: float) -> LayerChange:
    before, after = _signal(old), _signal(new)
    rel_before = _ratio(before, ref_before)
    rel_after = _ratio(after, ref_after)
    drift = None
    regressed, reason = False, None
    if _positive(rel_before) and _positive(rel_after):
        moved = abs(math.log10(rel_after)) - abs(math.log10(rel_before))
        drift = 10 ** moved
        if moved > limit:
            regressed = True
            reason = (f"backward signal relative to the reference went from "
                      f"{_fmt(rel_before)} to {_fmt(rel_after)}, {_fmt(drift)}× farther from 1 "
                      f"(factor {_fmt(10 ** limit)})")
    elif _positive(before) and not _positive(after):
        regressed = True
        reason = f"backward signal went from {_fmt(before)} to {_describe(after)}"
    return LayerChange(
        name=new.name, op_type=new.op_type, index=new.index, signal_before=_finite(before),
        signal_after=_finite(after), signal_change=_finite(_ratio(after, before)),
        relative_before=_finite(rel_before), relative_after=_finite(rel_after),
        drift=_finite(drift), regressed=regressed, reason=reason)


def _parameter_changes(before: Report, after: Report) -> Iterable[ParameterChange]:
    old = {p.name: p for layer in before.layers for p in layer.parameters}
    for layer in sorted(after.layers, key=lambda item: item.index):
        for param in layer.parameters:
            if param.name not in old:
                continue
            grad_before = old[param.name].grad_norm.median
            grad_after = param.grad_norm.median
            yield ParameterChange(name=param.name, layer=layer.name,
                                  grad_norm_before=grad_before, grad_norm_after=grad_after,
                                  change=_finite(_ratio(grad_after, grad_before)))


def _signal(layer: LayerReport) -> float | None:
    """The layer's backward signal; a non-finite one (counted, stored as null) is +inf."""
    if layer.output_grad_nonfinite_count:
        return math.inf
    return _median(layer.output_grad_norm)


def _median(stat: Stat | None) -> float | None:
    return None if stat is None else stat.median


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not _positive(denominator) or not math.isfinite(numerator):
        return None
    return numerator / denominator


def _positive(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value) and value > 0


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _describe(value: float | None) -> str:
    if value is None:
        return "not measured"
    return "non-finite" if not math.isfinite(value) else "exactly zero"


def _fmt(value: float) -> str:
    return f"{value:.3g}"
