"""The verdict's rules: the measured evidence -> one RuleCheck per rule, in order of precedence.

The first rule that fires sets the status (README, "Verdict rules"; docs/guide/rules.md). Which
rules can fire depends on the optimizer the caller trains with (``config.optimizer``): SGD steps
by lr·g, so the backward signal's *size* at the first layers decides; Adam steps every element by
≈ lr (:mod:`diagnostics.adam`), so it is judged by the first layers' share of the loss change and
by gradients below its ε, and its bounded steps make a large output scale harder to undo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diagnostics.config import DiagnosisConfig, Optimizer, SequenceLoss, Thresholds
from diagnostics.report import Evidence, RuleCheck, Status, TemporalProfile
from diagnostics.verdict_summary import UNGATED_CELL, deciding_rule

# A float64 re-measurement that falls this much further than the probe's own shows the probe saw
# rounding noise: an exact invariance gives ~1e-16 in float64 and ~1e-7 in float32. A float64
# ratio still under float32's rounding level cannot be told from noise either (a Cast to float32
# inside the graph keeps the noise): we say we cannot know.
_PRECISION_COLLAPSE = 1e-3
_FLOAT32_ROUNDING = 1e-6


@dataclass(frozen=True)
class Facts:
    """What the examination measured besides the per-layer statistics.

    Attributes:
        input_rms: Per sample, the RMS of the float inputs (None where the model has none).
        float64_ratio: The rounding step re-measured in float64 (None: not re-measured).
        substituted_readouts: Zero readout weights replaced by a fan-in initialization for the
            probe, so the body's profile could be measured at all.
        temporal: The temporal profiles of recurrent layers.
        ungated: Whether the profiled recurrent layer is an ungated (vanilla) cell.
        scale_invariant: Indices of the layers whose output reaches the loss only through a
            normalization (:mod:`diagnostics.scale_invariance`).
    """

    input_rms: tuple[float | None, ...] = ()
    float64_ratio: float | None = None
    substituted_readouts: tuple[str, ...] = ()
    temporal: tuple[TemporalProfile, ...] = field(default=())
    ungated: bool = False
    scale_invariant: frozenset[int] = frozenset()


def evaluate_rules(evidence: Evidence, config: DiagnosisConfig, facts: Facts) -> list[RuleCheck]:
    """Every rule, in order of precedence, judged on ``evidence`` under ``config``."""
    return [*_certain_rules(evidence, config.thresholds), *_profile_rules(evidence, config),
            *_time_and_step_rules(evidence, config, facts)]


def _certain_rules(evidence: Evidence, thresholds: Thresholds) -> list[RuleCheck]:
    noise = evidence.rounding_noise_ratio
    exact = evidence.rounding_noise_ratio_float64
    return [
        RuleCheck(rule="non_finite", value=float(evidence.nonfinite_count), threshold=0.0,
                  fired=evidence.nonfinite_count > 0,
                  detail="NaN/Inf in activations, gradients or the loss"),
        # Before the rules that read a missing normalization's artefacts: without the
        # BatchNorms the file's units die and its signal underflows to exact zeros
        # (transformers' EfficientNet-B7 hidden state, dynamo: no gradient at all), where the
        # network that trains has neither.
        RuleCheck(rule="folded_batchnorm", value=float(len(evidence.folded_normalization)),
                  threshold=0.0, fired=bool(evidence.folded_normalization),
                  detail="nodes into which the exporter folded a BatchNorm"),
        RuleCheck(rule="dead_layer", value=float(len(evidence.dead_layers_blocking)),
                  threshold=0.0, fired=bool(evidence.dead_layers_blocking),
                  detail="a layer whose units are all inactive stops every gradient below it"),
        RuleCheck(rule="no_gradient", value=0.0 if evidence.gradient_stops_at else None,
                  threshold=0.0, fired=evidence.gradient_stops_at is not None,
                  detail="every parameter's gradient below the readout is exactly zero"
                  + (f"; the gradient stops at {evidence.gradient_stops_at}"
                     if evidence.gradient_stops_at else "")),
        RuleCheck(rule="rounding_noise", value=noise, threshold=thresholds.rounding_ratio,
                  fired=noise is not None and not (
                      exact is not None
                      and exact >= max(noise * _PRECISION_COLLAPSE, _FLOAT32_ROUNDING)),
                  detail=(f"signal below {evidence.rounding_noise_layer} / at it"
                          + (f" (float64: {exact:.3g})" if exact is not None else ""))
                  if noise is not None else "signal just below the output layer / at it: not "
                  "near rounding level, so not re-measured"),
    ]


def _profile_rules(evidence: Evidence, config: DiagnosisConfig) -> list[RuleCheck]:
    thresholds = config.thresholds
    sgd = config.optimizer is Optimizer.SGD
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    growth = evidence.forward_growth.median if evidence.forward_growth else None
    growth_limit = config.forward_growth_limit
    l1 = evidence.weight_grad_l1_ratio.median if evidence.weight_grad_l1_ratio else None
    rms = evidence.first_weight_grad_rms
    ends = f"{evidence.deepest_layer} vs {evidence.shallowest_layer}"
    weight_ends = f"{evidence.first_weight_layer} vs {evidence.last_weight_layer}"
    # Under Adam a decayed backward signal is a stall only with one of two further facts: the
    # first weights' gradient below its ε, or their ‖g‖₁ decayed too. A small gradient at one
    # weight alone (an attention query at init) or a net merely initialized small is neither.
    decayed = ratio is not None and ratio < thresholds.vanishing_ratio
    judged_by_adam = "" if sgd else "; with optimizer adam it sets no status alone: Adam's " \
        "steps do not scale with the gradient's size (adam_epsilon, weight_gradient_vanishing " \
        "judge it)"
    judged_by_sgd = ("; judged with optimizer adam only" if sgd else "") + \
        ", where the backward-signal ratio is below vanishing_ratio as well"
    return [
        RuleCheck(rule="forward_scale_exploding", value=growth, threshold=growth_limit,
                  fired=growth is not None and growth > growth_limit,
                  detail="RMS of the output layer's activations / RMS of the inputs"
                  + ("" if sgd else " (Adam's bounded steps undo an output scale slowly)")),
        RuleCheck(rule="backward_signal_exploding", value=ratio,
                  threshold=thresholds.exploding_ratio,
                  fired=ratio is not None and ratio > thresholds.exploding_ratio
                  and not evidence.signal_growth_normalized,
                  detail=f"width-corrected ‖δ‖ ratio {ends} above the threshold"
                  + ("; not judged: every weight below the top feeds a normalization, so the "
                     "growth cannot blow the forward pass up" if evidence.signal_growth_normalized
                     else "")),
        RuleCheck(rule="backward_signal_vanishing", value=ratio,
                  threshold=thresholds.vanishing_ratio,
                  fired=sgd and ratio is not None and ratio < thresholds.vanishing_ratio,
                  detail=f"width-corrected ‖δ‖ ratio {ends} below the threshold{judged_by_adam}"),
        RuleCheck(rule="adam_epsilon", value=rms, threshold=thresholds.adam_gradient_floor,
                  fired=not sgd and decayed and rms is not None
                  and rms < thresholds.adam_gradient_floor,
                  detail=f"per-element gradient RMS of {evidence.first_weight_layer}'s weights; "
                  f"below the floor Adam's step lr·|g|/(|g|+ε) is under 1 % of lr{judged_by_sgd}"),
        RuleCheck(rule="weight_gradient_vanishing", value=l1,
                  threshold=thresholds.vanishing_ratio,
                  fired=not sgd and decayed and l1 is not None
                  and l1 < thresholds.vanishing_ratio,
                  detail=f"‖∂L/∂W‖₁ ratio {weight_ends}: how fast an Adam step there changes "
                  f"the loss, relative to one at the last hidden layer{judged_by_sgd}"),
    ]


def _time_and_step_rules(evidence: Evidence, config: DiagnosisConfig,
                         facts: Facts) -> list[RuleCheck]:
    thresholds = config.thresholds
    step = evidence.max_relative_step
    profile = facts.temporal[0] if facts.temporal else None
    length = len(profile.grad_norms) if profile else 0
    horizon_floor = thresholds.temporal_horizon_fraction * length
    sgd = config.optimizer is Optimizer.SGD
    how = "SGD step lr·‖∂L/∂W‖" if sgd else "Adam step lr·√numel (every element moves ≈ lr)"
    judged = facts.ungated or (sgd and config.sequence_loss is SequenceLoss.LAST_STEP)
    cell = UNGATED_CELL if facts.ungated else (
        "a gated recurrent cell under SGD with the loss on the last step only" if judged
        else "a gated recurrent cell (judged only with sequence_loss 'last_step' under SGD)")
    return [
        RuleCheck(rule="temporal_vanishing",
                  value=float(profile.effective_horizon) if profile else None,
                  threshold=horizon_floor if profile else None,
                  fired=bool(profile and judged and length > 1
                             and profile.effective_horizon < horizon_floor),
                  detail=f"effective horizon of {cell}, in steps, against "
                  f"{thresholds.temporal_horizon_fraction:g} × the sequence length"),
        RuleCheck(rule="relative_update", value=step, threshold=thresholds.max_relative_step,
                  fired=step is not None and step > thresholds.max_relative_step,
                  detail=f"largest first {how} / scale "
                  f"({evidence.max_relative_step_parameter}); weights of scale-invariant "
                  "layers are not judged"),
    ]


_STATUS_OF_RULE = {
    "non_finite": Status.EXPLODING,
    "dead_layer": Status.VANISHING,
    "no_gradient": Status.VANISHING,
    "rounding_noise": Status.INCONCLUSIVE,
    "folded_batchnorm": Status.INCONCLUSIVE,
    "forward_scale_exploding": Status.EXPLODING,
    "backward_signal_exploding": Status.EXPLODING,
    "backward_signal_vanishing": Status.VANISHING,
    "adam_epsilon": Status.VANISHING,
    "weight_gradient_vanishing": Status.VANISHING,
    "temporal_vanishing": Status.VANISHING,
    "relative_update": Status.EXPLODING,
}


def status_of(rules: list[RuleCheck]) -> Status:
    """The status the first fired rule sets (healthy when none fired)."""
    rule = deciding_rule(rules)
    return _STATUS_OF_RULE[rule.rule] if rule else Status.HEALTHY


