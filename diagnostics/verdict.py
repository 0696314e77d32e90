"""Statistics + thresholds -> a verdict with the evidence it rests on.

The primary signal is the backward-signal profile ‖δ_l‖ = ‖∂L/∂output_l‖ over the *hidden*
layers (README, "Verdict rules"): in a positively homogeneous net with too-large weights the
weight-gradient norms are flat across depth while δ explodes, so a first/last weight-gradient
ratio alone misses it. The ratio is taken between the deepest and the shallowest hidden layer
with parameters. The readout (the layers with weights nearest the outputs) is left out of it: a
scaled or zero-initialized head multiplies every hidden layer's signal by the same factor, which
is no pathology of depth, and is reported as its own finding. The ratio is corrected for width:
with fan-in initialization the total norm of δ is preserved layer to layer, with fan-out
initialization its per-element size is; of the two ratios we keep the one closer to 1 (or 1 if
they straddle it), so a change of width alone is never judged as vanishing or exploding.

Around it: exact zeros (no gradient at all) are vanishing; rounding noise (a loss that cannot see
a change) and folded exports are inconclusive; the forward scale and the first SGD step at the
configured learning rate judge explosions as training meets them; for ungated recurrent cells
(and gated ones when SGD trains on the last step only) the temporal horizon judges memory.

The optimizer (``config.optimizer``) decides which facts predict a stall. SGD steps by lr·g, so
the size of the gradient reaching the first layers is what matters: the backward-signal ratio.
Adam steps every element by ≈ lr whatever |g| (:mod:`diagnostics.adam`), so size alone does not
stall it; the first layers' share of the loss change (‖∂L/∂W‖₁ ratio) and gradients below Adam's
ε do, and its bounded steps make a large output scale harder to undo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diagnostics import adam, anatomy
from diagnostics.aggregate import is_weight, make_stat
from diagnostics.config import DiagnosisConfig, Optimizer, Thresholds
from diagnostics.gates import closed_gate
from diagnostics.model import LayerKind, LoadedModel
from diagnostics.probe import SampleObservation
from diagnostics.report import (
    Evidence,
    Flag,
    LayerReport,
    ParameterStats,
    Stat,
    Status,
    Verdict,
)
from diagnostics.scales import reference_norm
from diagnostics.stats import profile_ratio
from diagnostics.verdict_rules import Facts, evaluate_rules, status_of
from diagnostics.verdict_summary import summarize


@dataclass(frozen=True)
class SignalRatio:
    robust: float
    raw: float


def width_corrected_ratio(norm_deep: float, norm_shallow: float, numel_deep: int,
                          numel_shallow: int) -> SignalRatio:
    """‖δ_deep‖/‖δ_shallow‖, and its width-robust version (see the module docstring).

    A zero shallow norm with a non-zero deep one is treated as a ratio of +inf; both zero is 1.
    """
    raw = profile_ratio(norm_deep, norm_shallow)
    if norm_shallow == 0:
        return SignalRatio(raw, raw)
    per_element = raw * math.sqrt(numel_shallow / numel_deep) if numel_deep else raw
    if raw == 0:
        return SignalRatio(0.0, 0.0)
    if (raw < 1) != (per_element < 1):
        return SignalRatio(1.0, raw)
    robust = raw if abs(math.log(raw)) < abs(math.log(per_element)) else per_element
    return SignalRatio(robust, raw)


def _measured(layer: LayerReport) -> float | None:
    norm = layer.output_grad_norm
    return norm.median if norm is not None else None


def _endpoints(model: LoadedModel, layers: list[LayerReport], readouts: list[int], *,
               weighted: bool = False, gate: int | None = None) -> tuple[int, int] | None:
    """The deepest and shallowest hidden layers with parameters (``weighted``: with a weight
    matrix or kernel, the layers Adam's step-size rules judge), below ``gate`` if given."""
    above = min((model.layers[i].depth for i in readouts), default=-1)
    if gate is not None:
        above = max(above, model.layers[gate].depth)
    candidates = [
        i for i, layer in enumerate(layers)
        if LayerKind.PARAMETRIC in model.layers[i].kinds and layer.depth > above
        and not anatomy.is_table(model, i) and _measured(layer) is not None and layer.output_numel
        and not model.layers[i].attention_scores
        and (not weighted or any(is_weight(p) for p in layer.parameters))
    ]
    if len(candidates) < 2:
        return None
    deepest = min(candidates, key=lambda i: (-layers[i].depth, i))
    # A layer that gets exactly no gradient while layers below it get some sits in a branch that
    # an exact zero closes further up (timm's zero_init_last: a BatchNorm γ = 0 multiplying a
    # squeeze-excitation gate); the signal bypasses it, so it is no endpoint. Where nothing is
    # reached, the zeros are the finding (no_gradient, dead_layer) and the ends stay.
    reached = [i for i in candidates if _measured(layers[i])]
    shallowest = min(reached if len(reached) >= 2 else candidates,
                     key=lambda i: (layers[i].depth, -i))
    if layers[deepest].depth == layers[shallowest].depth:
        return None
    return deepest, shallowest


def sample_ratios(layers: list[LayerReport], samples: list[SampleObservation],
                  ends: tuple[int, int]) -> list[SignalRatio | None]:
    """The signal ratio between the endpoints in each sample (None where not measured)."""
    deep, shallow = ends
    ratios: list[SignalRatio | None] = []
    for sample in samples:
        a = sample.layers[deep].output_grad_norm
        b = sample.layers[shallow].output_grad_norm
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            ratios.append(None)
        else:
            ratios.append(width_corrected_ratio(a, b, layers[deep].output_numel or 1,
                                                layers[shallow].output_numel or 1))
    return ratios


def rounding_step(layers: list[LayerReport]) -> tuple[str, float] | None:
    """(output layer, signal just below it / at it) when the gradient reaching the outputs is
    non-zero; the width-robust ratio of the largest signals on either side."""
    top = [layer for layer in layers if layer.depth == 0 and (_measured(layer) or 0) > 0]
    below = [layer for layer in layers if layer.depth > 0 and _measured(layer) is not None]
    if not top or not below:
        return None
    head = max(top, key=lambda layer: _measured(layer) or 0)
    under = max(below, key=lambda layer: _measured(layer) or 0)
    ratio = width_corrected_ratio(_measured(under) or 0.0, _measured(head) or 0.0,
                                  under.output_numel or 1, head.output_numel or 1).robust
    return head.name, ratio


def judge(model: LoadedModel, layers: list[LayerReport], samples: list[SampleObservation],
          config: DiagnosisConfig, facts: Facts | None = None) -> tuple[Verdict, list[Status]]:
    """Decide the status, flag layers in place, and say why.

    Returns:
        The verdict, and the status each sample alone would get.
    """
    facts = facts or Facts()
    thresholds = config.thresholds
    evidence = Evidence(folded_normalization=list(model.folded_normalization))
    readouts = anatomy.readout_indices(model)
    evidence.readout_layers = [layers[i].name for i in readouts]
    evidence.readout_scale = _readout_scale(model, readouts)
    gate = closed_gate(model, layers, thresholds.small_readout_fraction)
    if gate is not None:
        evidence.closed_gate_layer, evidence.closed_gate_scale = layers[gate[0]].name, gate[1]
    below = gate[0] if gate else None
    ends = _endpoints(model, layers, readouts, gate=below)
    ratios: list[SignalRatio | None] = []
    adam_facts = _AdamFacts.none(len(samples))
    if ends:
        deep, shallow = ends
        ratios = sample_ratios(layers, samples, ends)
        evidence.backward_signal_ratio = make_stat([r.robust if r else None for r in ratios])
        evidence.backward_signal_ratio_raw = make_stat([r.raw if r else None for r in ratios])
        evidence.deepest_layer, evidence.shallowest_layer = layers[deep].name, layers[shallow].name
        steps = sum(1 for i, layer in enumerate(layers)
                    if LayerKind.PARAMETRIC in model.layers[i].kinds
                    and layers[shallow].depth < layer.depth <= layers[deep].depth)
        ratio = evidence.backward_signal_ratio.median
        if ratio is not None and ratio > 0 and math.isfinite(ratio) and steps:
            evidence.per_layer_gain = ratio ** (1 / steps)
        _flag_profile(model, layers, shallow, thresholds)
        evidence.weight_grad_ratio = _weight_grad_ratio(layers, deep, shallow)
        evidence.signal_growth_normalized = _normalized_below(model, layers, shallow,
                                                              facts.scale_invariant)
    weight_ends = _endpoints(model, layers, readouts, weighted=True, gate=below)
    if weight_ends:
        adam_facts = _AdamFacts(adam.sample_l1_ratios(layers, samples, weight_ends),
                                adam.sample_first_rms(layers, samples, weight_ends[0]))
        evidence.weight_grad_l1_ratio = adam.l1_ratio_stat(adam_facts.l1_ratios)
        evidence.first_weight_grad_rms = adam.first_weight_grad_rms(layers, weight_ends[0])
        evidence.first_weight_layer, evidence.last_weight_layer = \
            layers[weight_ends[0]].name, layers[weight_ends[1]].name
    evidence.scale_invariant_layers = [layers[i].name for i in sorted(facts.scale_invariant)]
    _collect_layer_evidence(layers, samples, evidence)
    _relative_steps(model, layers, config, evidence, facts.scale_invariant)
    evidence.forward_growth = _forward_growth(layers, samples, readouts, facts)
    _gradient_stop(layers, readouts, evidence)
    evidence.dead_layers_blocking = _blocking_dead_layers(layers)
    step = rounding_step(layers)
    if step is not None and 0 < step[1] < thresholds.rounding_ratio:
        evidence.rounding_noise_layer, evidence.rounding_noise_ratio = step
        evidence.rounding_noise_ratio_float64 = facts.float64_ratio
    rules = evaluate_rules(evidence, config, facts)
    evidence.rules = rules
    status = status_of(rules)
    per_sample = [_sample_status(sample, ratio, config, status, adam_facts.of(i),
                                 evidence.signal_growth_normalized)
                  for i, (sample, ratio) in
                  enumerate(zip(samples, ratios or [None] * len(samples), strict=True))]
    flags = sorted({flag for layer in layers for flag in layer.flags}, key=list(Flag).index)
    if status is Status.EXPLODING and evidence.nonfinite_count and Flag.NON_FINITE not in flags:
        flags.append(Flag.NON_FINITE)
    if any(sample.nonfinite_inputs for sample in samples):
        flags.append(Flag.NONFINITE_INPUT)
    summary = summarize(status, rules, evidence, samples, facts.substituted_readouts,
                        config.optimizer)
    return Verdict(status=status, summary=summary, flags=flags, evidence=evidence), per_sample


def _readout_scale(model: LoadedModel, readouts: list[int]) -> float | None:
    scales = []
    for index in readouts:
        for name in anatomy.weight_names(model, index):
            param = model.parameters[name]
            reference = reference_norm(model, model.layers[index], param)
            if reference:
                scales.append(float(param.detach().double().norm()) / reference)
    return min(scales) if scales else None


def _flag_profile(model: LoadedModel, layers: list[LayerReport], shallow: int,
                  thresholds: Thresholds) -> None:
    # Only the profile's own subjects are flagged: the hidden layers with parameters. A softmax
    # or an attention score inside a block scales its gradient down by design.
    top = layers[shallow]
    top_norm = _measured(top)
    if not top_norm:
        return
    # An exact zero above a layer the gradient reaches is a closed branch (see _endpoints), not
    # a vanishing signal.
    reached_depth = max((layer.depth for layer in layers if _measured(layer)), default=-1)
    for index, layer in enumerate(layers):
        norm = _measured(layer)
        if norm is None or layer.depth <= top.depth or not layer.output_numel or \
                (norm == 0 and layer.depth < reached_depth) or \
                LayerKind.PARAMETRIC not in model.layers[index].kinds or \
                anatomy.is_table(model, index) or model.layers[index].attention_scores:
            continue
        ratio = width_corrected_ratio(norm, top_norm, layer.output_numel,
                                      top.output_numel or 1).robust
        if ratio < thresholds.vanishing_ratio and Flag.VANISHING not in layer.flags:
            layer.flags.append(Flag.VANISHING)
        elif ratio > thresholds.exploding_ratio and Flag.EXPLODING not in layer.flags:
            layer.flags.append(Flag.EXPLODING)


def _weight_grad_ratio(layers: list[LayerReport], deep: int, shallow: int) -> Stat | None:
    def weight_norms(layer: LayerReport) -> Stat | None:
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


def _normalized_below(model: LoadedModel, layers: list[LayerReport], top: int,
                      invariant: frozenset[int]) -> bool:
    """Whether every layer with a weight below ``top`` (the profile's shallow end) is
    scale-invariant: a growing backward signal then cannot blow the forward pass up."""
    # Tables (embeddings, inserted tokens) are left out, as the profile's endpoints and
    # relative_update leave them out: a row moves only where it is used.
    below = [i for i, layer in enumerate(layers)
             if LayerKind.PARAMETRIC in model.layers[i].kinds and not anatomy.is_table(model, i)
             and layer.depth > layers[top].depth and any(is_weight(p) for p in layer.parameters)]
    return bool(below) and all(i in invariant for i in below)


def _relative_steps(model: LoadedModel, layers: list[LayerReport], config: DiagnosisConfig,
                    evidence: Evidence, invariant: frozenset[int]) -> None:
    """‖first step‖ / max(‖W‖, fan-in norm) for every weight; flag layers whose step is too
    large. The step is lr·‖g‖ for SGD and ≈ lr·√numel for Adam (every element moves by ≈ lr).
    Scale-invariant layers' weights are not judged: a step that overwrites one turns it and
    grows its norm, and the normalization after it bounds the output
    (:mod:`diagnostics.scale_invariance`)."""
    best: tuple[float, str] | None = None
    for index, layer in enumerate(layers):
        if index in invariant or anatomy.is_table(model, index):
            # Lookup tables, added tensors (position/token-type embeddings) and inserted tokens
            # (class tokens): a row moves only where it is used, by the sum over every position
            # that used it, and the normalization after them makes the step scale-invariant, so
            # a whole-table step is no measure of what one update does to the function. (timm's
            # DeiT-III class token, std 1e-6, steps to norm ~1 under SGD at 1e-2; its gradient
            # then falls 109 -> 0.03 while the loss drops.)
            continue
        for param in layer.parameters:
            grad = param.grad_norm.median
            if not is_weight(param) or grad is None or param.name not in model.parameters:
                continue
            reference = reference_norm(model, model.layers[index], model.parameters[param.name])
            norm = param.weight_norm or 0.0
            scale = max(norm, reference or 0.0)
            if scale <= 0:
                continue
            if reference and norm < config.thresholds.small_readout_fraction * reference:
                evidence.reference_scale_parameters.append(param.name)
            step = _first_step(param, grad, config) / scale
            if step > config.thresholds.max_relative_step and Flag.LARGE_UPDATE not in \
                    layer.flags:
                layer.flags.append(Flag.LARGE_UPDATE)
            if best is None or step > best[0]:
                best = (step, param.name)
    if best:
        evidence.max_relative_step, evidence.max_relative_step_parameter = best


def _first_step(param: ParameterStats, grad_norm: float, config: DiagnosisConfig) -> float:
    """‖ΔW‖ of the first step at the configured optimizer and learning rate."""
    if config.optimizer is Optimizer.ADAM:
        return adam.first_step_norm(param.grad_rms.median or 0.0, math.prod(param.shape),
                                    config.learning_rate)
    return config.learning_rate * grad_norm


def _forward_growth(layers: list[LayerReport], samples: list[SampleObservation],
                    readouts: list[int], facts: Facts) -> Stat | None:
    """RMS of the readout's output (else the outputs' layer) over the RMS of the float inputs."""
    if not facts.input_rms or all(rms is None for rms in facts.input_rms):
        return None
    target = readouts[0] if readouts else next(
        (i for i, layer in enumerate(layers) if layer.depth == 0 and layer.activations), None)
    if target is None:
        return None
    values: list[float | None] = []
    for sample, rms_in in zip(samples, facts.input_rms, strict=False):
        summary = sample.layers[target].activation
        if summary is None or not rms_in:
            values.append(None)
            continue
        rms_out = math.sqrt(summary.mean ** 2 + summary.std ** 2)
        values.append(rms_out / rms_in if math.isfinite(rms_out) else None)
    stat = make_stat(values)
    return stat if stat.median is not None else None


def _gradient_stop(layers: list[LayerReport], readouts: list[int], evidence: Evidence) -> None:
    """Where the gradient stops when no parameter of the body (the layers below the readout;
    the whole model if it has no such layer) receives any: all exactly zero, for good."""
    above = min((layers[i].depth for i in readouts), default=-1)
    params = [p for layer in layers if layer.depth > above for p in layer.parameters] or \
        [p for layer in layers for p in layer.parameters]
    if not params or any(p.grad_norm.max != 0 for p in params) or evidence.nonfinite_count:
        return
    reached = [layer for layer in layers if (_measured(layer) or 0) > 0]
    if not reached:
        evidence.gradient_stops_at = "the outputs"
        return
    evidence.gradient_stops_at = max(reached, key=lambda layer: (layer.depth, layer.index)).name


def _blocking_dead_layers(layers: list[LayerReport]) -> list[str]:
    """Dead layers below which every parameter's gradient is exactly zero."""
    blocking = []
    for dead in (layer for layer in layers if Flag.DEAD in layer.flags):
        below = [p for layer in layers if layer.depth > dead.depth for p in layer.parameters]
        if below and all(p.grad_norm.max == 0 for p in below):
            blocking.append(dead.name)
    return blocking


@dataclass(frozen=True)
class _AdamFacts:
    """Per sample, what the Adam rules judge: the ‖∂L/∂W‖₁ ratio and the first weight's RMS."""

    l1_ratios: list[float | None]
    first_rms: list[float | None]

    @classmethod
    def none(cls, count: int) -> _AdamFacts:
        return cls([None] * count, [None] * count)

    def of(self, index: int) -> tuple[float | None, float | None]:
        return self.l1_ratios[index], self.first_rms[index]


def _sample_status(sample: SampleObservation, ratio: SignalRatio | None,
                   config: DiagnosisConfig, overall: Status,
                   adam_facts: tuple[float | None, float | None],
                   growth_normalized: bool = False) -> Status:
    thresholds = config.thresholds
    if not math.isfinite(sample.loss) or sample.first_nonfinite_backward or \
            sample.first_nonfinite_forward:
        return Status.EXPLODING
    if overall is Status.INCONCLUSIVE:
        return overall
    if ratio is not None and ratio.robust > thresholds.exploding_ratio:
        return Status.HEALTHY if growth_normalized else Status.EXPLODING
    if ratio is None or ratio.robust >= thresholds.vanishing_ratio:
        return Status.HEALTHY
    if config.optimizer is Optimizer.ADAM:
        l1, rms = adam_facts
        stalled = (l1 is not None and l1 < thresholds.vanishing_ratio) or \
            (rms is not None and rms < thresholds.adam_gradient_floor)
        return Status.VANISHING if stalled else Status.HEALTHY
    return Status.VANISHING
