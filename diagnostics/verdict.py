"""Statistics + thresholds -> a verdict with the evidence it rests on.

The primary signal is the backward-signal profile ‖δ_l‖ = ‖∂L/∂output_l‖ over depth (DOMAIN.md
§2): in a positively homogeneous net with too-large weights the weight-gradient norms are flat
across depth while δ explodes, so a first/last weight-gradient ratio alone misses it. The ratio is
taken between the deepest and the shallowest layer *with parameters*, so an output Softmax or
Sigmoid (whose Jacobian scales every gradient equally) does not count as a pathology, and it is
corrected for width: with fan-in initialization the total norm of δ is preserved layer to layer,
with fan-out initialization its per-element size is. Of the two ratios we keep the one closer to 1
(or 1 if they straddle it), so a change of width alone is never judged as vanishing or exploding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diagnostics.aggregate import is_weight, make_stat
from diagnostics.config import Thresholds
from diagnostics.model import LayerKind, LoadedModel
from diagnostics.probe import SampleObservation
from diagnostics.report import Evidence, Flag, LayerReport, RuleCheck, Status, Verdict


@dataclass(frozen=True)
class SignalRatio:
    robust: float
    raw: float


def width_corrected_ratio(norm_deep: float, norm_shallow: float, numel_deep: int,
                          numel_shallow: int) -> SignalRatio:
    """‖δ_deep‖/‖δ_shallow‖, and its width-robust version (see the module docstring).

    A zero shallow norm with a non-zero deep one is treated as a ratio of +inf; both zero is 1.
    """
    if norm_shallow == 0:
        raw = math.inf if norm_deep > 0 else 1.0
        return SignalRatio(raw, raw)
    raw = norm_deep / norm_shallow
    per_element = raw * math.sqrt(numel_shallow / numel_deep) if numel_deep else raw
    if raw == 0:
        return SignalRatio(0.0, 0.0)
    if (raw < 1) != (per_element < 1):
        return SignalRatio(1.0, raw)
    robust = raw if abs(math.log(raw)) < abs(math.log(per_element)) else per_element
    return SignalRatio(robust, raw)


def _endpoints(model: LoadedModel, layers: list[LayerReport]) -> tuple[int, int] | None:
    candidates = [
        i for i, layer in enumerate(layers)
        if LayerKind.PARAMETRIC in model.layers[i].kinds and layer.output_grad_norm is not None
        and layer.output_grad_norm.median is not None and layer.output_numel
    ]
    if len(candidates) < 2:
        return None
    deepest = min(candidates, key=lambda i: (-layers[i].depth, i))
    shallowest = min(candidates, key=lambda i: (layers[i].depth, -i))
    if layers[deepest].depth == layers[shallowest].depth:
        return None
    return deepest, shallowest


def sample_ratios(model: LoadedModel, layers: list[LayerReport], samples: list[SampleObservation],
                  ends: tuple[int, int]) -> list[SignalRatio | None]:
    """The signal ratio between the endpoints in each sample (None where not measured)."""
    deep, shallow = ends
    ratios = []
    for sample in samples:
        a = sample.layers[deep].output_grad_norm
        b = sample.layers[shallow].output_grad_norm
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            ratios.append(None)
        else:
            ratios.append(width_corrected_ratio(a, b, layers[deep].output_numel or 1,
                                                layers[shallow].output_numel or 1))
    return ratios


def judge(model: LoadedModel, layers: list[LayerReport], samples: list[SampleObservation],
          thresholds: Thresholds) -> tuple[Verdict, list[Status]]:
    """Decide the status, flag layers in place, and say why.

    Returns:
        The verdict, and the status each sample alone would get.
    """
    evidence = Evidence()
    ends = _endpoints(model, layers)
    ratios: list[SignalRatio | None] = []
    if ends:
        deep, shallow = ends
        ratios = sample_ratios(model, layers, samples, ends)
        evidence.backward_signal_ratio = make_stat([r.robust if r else None for r in ratios])
        evidence.backward_signal_ratio_raw = make_stat([r.raw if r else None for r in ratios])
        evidence.deepest_layer, evidence.shallowest_layer = layers[deep].name, layers[shallow].name
        steps = sum(1 for i, layer in enumerate(layers)
                    if LayerKind.PARAMETRIC in model.layers[i].kinds
                    and layers[shallow].depth < layer.depth <= layers[deep].depth)
        ratio = evidence.backward_signal_ratio.median
        if ratio is not None and ratio > 0 and math.isfinite(ratio) and steps:
            evidence.per_layer_gain = ratio ** (1 / steps)
        _flag_profile(layers, shallow, thresholds)
        evidence.weight_grad_ratio = _weight_grad_ratio(layers, deep, shallow)
    _collect_layer_evidence(layers, samples, evidence)
    rules = _rules(evidence, thresholds)
    evidence.rules = rules
    status = _status(rules)
    per_sample = [_sample_status(sample, ratio, thresholds) for sample, ratio in
                  zip(samples, ratios or [None] * len(samples), strict=True)]
    flags = sorted({flag for layer in layers for flag in layer.flags}, key=list(Flag).index)
    if status is Status.EXPLODING and evidence.nonfinite_count and Flag.NON_FINITE not in flags:
        flags.append(Flag.NON_FINITE)
    if any(sample.nonfinite_inputs for sample in samples):
        flags.append(Flag.NONFINITE_INPUT)
    summary = _summary(status, evidence, samples)
    return Verdict(status=status, summary=summary, flags=flags, evidence=evidence), per_sample


def _flag_profile(layers: list[LayerReport], shallow: int, thresholds: Thresholds) -> None:
    top = layers[shallow]
    top_norm = top.output_grad_norm.median if top.output_grad_norm else None
    if not top_norm:
        return
    for layer in layers:
        norm = layer.output_grad_norm.median if layer.output_grad_norm else None
        if norm is None or layer.depth <= top.depth or not layer.output_numel:
            continue
        ratio = width_corrected_ratio(norm, top_norm, layer.output_numel,
                                      top.output_numel or 1).robust
        if ratio < thresholds.vanishing_ratio and Flag.VANISHING not in layer.flags:
            layer.flags.append(Flag.VANISHING)
        elif ratio > thresholds.exploding_ratio and Flag.EXPLODING not in layer.flags:
            layer.flags.append(Flag.EXPLODING)


def _weight_grad_ratio(layers: list[LayerReport], deep: int, shallow: int):
    def weight_norms(layer: LayerReport):
        weights = [p for p in layer.parameters if is_weight(p)] or layer.parameters
        return weights[0].grad_norm if weights else None

    a, b = weight_norms(layers[deep]), weight_norms(layers[shallow])
    if not a or not b or a.median is None or not b.median:
        return None
    return make_stat([a.median / b.median])


def _collect_layer_evidence(layers: list[LayerReport], samples: list[SampleObservation],
                            evidence: Evidence) -> None:
    best = None
    for layer in layers:
        for param in layer.parameters:
            value = param.grad_to_weight.median
            if is_weight(param) and value is not None and (best is None or value > best[0]):
                best = (value, param.name)
        if Flag.DEAD in layer.flags:
            evidence.dead_layers.append(layer.name)
        if Flag.DYING in layer.flags:
            evidence.dying_layers.append(layer.name)
        if Flag.SATURATED in layer.flags:
            evidence.saturated_layers.append(layer.name)
        evidence.nonfinite_count += layer.output_grad_nonfinite_count + sum(
            p.nonfinite_count for p in layer.parameters)
        if layer.activations:
            evidence.nonfinite_count += layer.activations.nonfinite_count
    if best:
        evidence.max_grad_to_weight, evidence.max_grad_to_weight_parameter = best
    evidence.first_nonfinite_forward = next(
        (s.first_nonfinite_forward for s in samples if s.first_nonfinite_forward), None)
    evidence.first_nonfinite_backward = next(
        (s.first_nonfinite_backward for s in samples if s.first_nonfinite_backward), None)
    if any(not math.isfinite(s.loss) for s in samples):
        evidence.nonfinite_count = max(evidence.nonfinite_count, 1)


def _blocked_by_dead(evidence: Evidence) -> bool:
    ratio = evidence.backward_signal_ratio
    return bool(evidence.dead_layers) and ratio is not None and ratio.median == 0


def _rules(evidence: Evidence, thresholds: Thresholds) -> list[RuleCheck]:
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    g2w = evidence.max_grad_to_weight
    ends = f"{evidence.deepest_layer} vs {evidence.shallowest_layer}"
    return [
        RuleCheck(rule="non_finite", value=float(evidence.nonfinite_count), threshold=0.0,
                  fired=evidence.nonfinite_count > 0,
                  detail="NaN/Inf in activations, gradients or the loss"),
        RuleCheck(rule="dead_layer", value=float(len(evidence.dead_layers)), threshold=0.0,
                  fired=_blocked_by_dead(evidence),
                  detail="a layer whose units are all inactive stops every gradient below it"),
        RuleCheck(rule="backward_signal_vanishing", value=ratio,
                  threshold=thresholds.vanishing_ratio,
                  fired=ratio is not None and ratio < thresholds.vanishing_ratio,
                  detail=f"width-corrected ‖δ‖ ratio {ends} below the threshold"),
        RuleCheck(rule="backward_signal_exploding", value=ratio,
                  threshold=thresholds.exploding_ratio,
                  fired=ratio is not None and ratio > thresholds.exploding_ratio,
                  detail=f"width-corrected ‖δ‖ ratio {ends} above the threshold"),
        RuleCheck(rule="relative_update", value=g2w, threshold=thresholds.max_grad_to_weight,
                  fired=g2w is not None and g2w > thresholds.max_grad_to_weight,
                  detail=f"largest ‖∂L/∂W‖/‖W‖ ({evidence.max_grad_to_weight_parameter})"),
    ]


def _status(rules: list[RuleCheck]) -> Status:
    fired = {rule.rule for rule in rules if rule.fired}
    if "non_finite" in fired:
        return Status.EXPLODING
    if "dead_layer" in fired:
        return Status.VANISHING
    if "backward_signal_exploding" in fired:
        return Status.EXPLODING
    if "backward_signal_vanishing" in fired:
        return Status.VANISHING
    if "relative_update" in fired:
        return Status.EXPLODING
    return Status.HEALTHY


def _sample_status(sample: SampleObservation, ratio: SignalRatio | None,
                   thresholds: Thresholds) -> Status:
    if not math.isfinite(sample.loss) or sample.first_nonfinite_backward or \
            sample.first_nonfinite_forward:
        return Status.EXPLODING
    if ratio is None:
        return Status.HEALTHY
    if ratio.robust > thresholds.exploding_ratio:
        return Status.EXPLODING
    if ratio.robust < thresholds.vanishing_ratio:
        return Status.VANISHING
    return Status.HEALTHY


def _summary(status: Status, evidence: Evidence, samples: list[SampleObservation]) -> str:
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    raw = evidence.backward_signal_ratio_raw.median if evidence.backward_signal_ratio_raw else None
    gain = f", {evidence.per_layer_gain:.3g}× per layer" if evidence.per_layer_gain else ""
    profile = None
    if ratio is not None:
        shown = f"{raw:.3g}× (width-corrected {ratio:.3g}×)" if raw is not None and \
            f"{raw:.3g}" != f"{ratio:.3g}" else f"{ratio:.3g}×"
        profile = (f"the backward signal at {evidence.deepest_layer} is {shown} that at "
                   f"{evidence.shallowest_layer}{gain}")
    bad_inputs = sorted({name for s in samples for name in s.nonfinite_inputs})
    if status is Status.EXPLODING and evidence.nonfinite_count:
        if bad_inputs:
            return (f"Exploding: gradients are NaN/Inf, but the sample inputs "
                    f"{', '.join(bad_inputs)} already hold NaN/Inf values; fix the inputs first.")
        where = evidence.first_nonfinite_forward or evidence.first_nonfinite_backward
        phase = "forward pass" if evidence.first_nonfinite_forward else "backward pass"
        located = f", first in the {phase} at {where}" if where else ""
        return f"Exploding: {evidence.nonfinite_count} NaN/Inf values{located}."
    if status is Status.VANISHING and evidence.dead_layers and (ratio == 0):
        return (f"Vanishing: layer {evidence.dead_layers[0]} is dead (no unit active on any "
                "sample), so every layer below it receives exactly zero gradient.")
    if status is Status.VANISHING:
        extra = (f"; {len(evidence.saturated_layers)} saturated layer(s)"
                 if evidence.saturated_layers else "")
        return f"Vanishing: {profile}{extra}."
    if status is Status.EXPLODING and ratio is not None and ratio > 1 and profile:
        return f"Exploding: {profile}."
    if status is Status.EXPLODING:
        return (f"Exploding: ‖∂L/∂W‖/‖W‖ reaches {evidence.max_grad_to_weight:.3g} at "
                f"{evidence.max_grad_to_weight_parameter}; one SGD step would overwrite it.")
    if profile:
        return f"Healthy: {profile}, within the thresholds."
    return "Healthy: no rule fired (fewer than two layers with parameters to compare)."
