"""Per-sample observations -> per-layer report entries (median and min/max over samples)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from diagnostics.config import Thresholds
from diagnostics.model import LoadedModel
from diagnostics.probe import SampleObservation
from diagnostics.report import ActivationStats, Flag, LayerReport, ParameterStats, Stat
from diagnostics.stats import l2_norm


def make_stat(values: Iterable[float | None]) -> Stat:
    """Median and spread of the finite values; all ``None`` when none is finite."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return Stat(median=None, min=None, max=None)
    return Stat(median=statistics.median(finite), min=finite[0], max=finite[-1])


def optional_stat(values: list[float | None]) -> Stat | None:
    return None if all(v is None for v in values) else make_stat(values)


def build_layer_reports(model: LoadedModel, samples: list[SampleObservation],
                        thresholds: Thresholds) -> list[LayerReport]:
    """One :class:`LayerReport` per watched layer, parameters listed under their first user.

    Flags set here are the per-layer findings that need no cross-layer comparison (saturated,
    dying/dead, non-finite, float16 range); the verdict adds vanishing/exploding and large
    updates (which need the learning rate and each weight's reference scale).
    """
    weight_norms = {name: l2_norm(param) for name, param in model.parameters.items()}
    users: dict[str, list[str]] = {}
    for layer in model.layers:
        for name in layer.parameters:
            users.setdefault(name, []).append(layer.name)
    listed: set[str] = set()
    reports = []
    for index, layer in enumerate(model.layers):
        observations = [sample.layers[index] for sample in samples]
        activations = [o.activation for o in observations if o.activation is not None]
        params = []
        for name in layer.parameters:
            if name in listed or name not in model.parameters:
                continue
            listed.add(name)
            params.append(_parameter_stats(name, model, samples, weight_norms[name],
                                           [u for u in users[name] if u != layer.name]))
        report = LayerReport(
            name=layer.name,
            op_type=layer.op_type,
            index=index,
            depth=layer.depth,
            kinds=sorted(kind.value for kind in layer.kinds),
            activation=layer.activation.value if layer.activation else None,
            output_numel=activations[0].numel_per_sample if activations else None,
            output_grad_norm=optional_stat([o.output_grad_norm for o in observations]),
            output_grad_nonfinite_count=max(o.grad_nonfinite for o in observations),
            activations=_activation_stats(activations) if activations else None,
            parameters=params,
        )
        report.flags = _layer_flags(report, thresholds)
        reports.append(report)
    return reports


def _parameter_stats(name: str, model: LoadedModel, samples: list[SampleObservation],
                     weight_norm: float, shared_with: list[str]) -> ParameterStats:
    grads = [sample.parameters.get(name) for sample in samples]
    weight = weight_norm if math.isfinite(weight_norm) else None

    def pick(attribute: str) -> Stat:
        return make_stat([getattr(g, attribute) if g else None for g in grads])

    ratios = [g.norm / weight if g and weight else None for g in grads]
    underflow = [g.fp16_underflow_fraction if g else None for g in grads]
    return ParameterStats(
        name=name,
        shape=list(model.parameters[name].shape),
        grad_norm=pick("norm"),
        grad_rms=pick("rms"),
        grad_mean_abs=pick("mean_abs"),
        grad_max_abs=pick("max_abs"),
        weight_norm=weight,
        grad_to_weight=make_stat(ratios),
        zero_fraction=pick("zero_fraction"),
        nonfinite_count=max((g.nonfinite_count for g in grads if g), default=0),
        fp16_underflow_fraction=optional_stat(underflow),
        shared_with=shared_with,
    )


def _activation_stats(activations: list) -> ActivationStats:
    return ActivationStats(
        mean=make_stat([a.mean for a in activations]),
        std=make_stat([a.std for a in activations]),
        saturated_fraction=optional_stat([a.saturated_fraction for a in activations]),
        dead_fraction=optional_stat([a.dead_fraction for a in activations]),
        nonfinite_count=max(a.nonfinite_count for a in activations),
    )


def _layer_flags(layer: LayerReport, thresholds: Thresholds) -> list[Flag]:
    flags = []
    acts = layer.activations
    if acts and acts.saturated_fraction and (acts.saturated_fraction.median or 0) >= \
            thresholds.saturated_layer_fraction:
        flags.append(Flag.SATURATED)
    if acts and acts.dead_fraction and acts.dead_fraction.median is not None:
        if acts.dead_fraction.median >= 1.0:
            flags.append(Flag.DEAD)
        elif acts.dead_fraction.median >= thresholds.dying_layer_fraction:
            flags.append(Flag.DYING)
    if (acts and acts.nonfinite_count) or layer.output_grad_nonfinite_count or any(
            p.nonfinite_count for p in layer.parameters):
        flags.append(Flag.NON_FINITE)
    noise = cancelled_parameters(layer)
    if any(p.fp16_underflow_fraction and (p.fp16_underflow_fraction.median or 0) >=
           thresholds.fp16_underflow_layer_fraction
           for p in layer.parameters if p.name not in noise):
        flags.append(Flag.FP16_UNDERFLOW)
    if any((p.grad_max_abs.max or 0) > thresholds.fp16_max for p in layer.parameters):
        flags.append(Flag.FP16_OVERFLOW)
    return flags


def is_weight(param: ParameterStats) -> bool:
    """A matrix or kernel (not a bias, scale or scalar): what relative updates are judged on."""
    return len(param.shape) >= 2


# A gradient this many times smaller than the layer's others is rounding noise (float32 leaves
# ~1e-7 relative; a genuine bias gradient sums the output gradient's rows and is ~1e-3 of it or
# more): about 100 float32 ulps, two decades of margin on each side.
CANCELLED_RELATIVE = 1e-5


def cancelled_parameters(layer: LayerReport) -> set[str]:
    """Names of the layer's bias-like parameters whose gradient is zero in exact arithmetic.

    Some gradients cancel by structure: an attention key bias shifts every score of a query by
    the same amount and softmax is invariant to it; a bias right before batch-statistics
    BatchNorm is subtracted again with the batch mean. What float32 leaves of them is rounding
    noise, so flags about their magnitude (float16 underflow) are noise too. Such a parameter
    (a vector or scalar, never a weight matrix, whose gradient also scales with the layer's
    input) is recognised by its gradient norm being below ``CANCELLED_RELATIVE`` times the
    largest of the layer's output gradient ‖δ‖ and its other parameters' gradient norms.
    """
    def median(stat: Stat | None) -> float:
        value = stat.median if stat is not None else None
        return value if value is not None and math.isfinite(value) else 0.0

    cancelled = set()
    for param in layer.parameters:
        if is_weight(param):
            continue
        scale = max([median(layer.output_grad_norm)] + [
            median(other.grad_norm) for other in layer.parameters if other is not param])
        if scale > 0 and median(param.grad_norm) <= CANCELLED_RELATIVE * scale:
            cancelled.add(param.name)
    return cancelled
