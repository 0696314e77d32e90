"""The verdict's summary sentence: the rule that decided, what it measured, what to do.

Every summary starts with the status and the deciding rule, "Exploding (relative_update): …",
so a reader of a CI log knows which rule to look up (README, "Verdict rules").
"""

from __future__ import annotations

from diagnostics.config import Optimizer
from diagnostics.loading.onnx.folding import FOLDING_ADVICE
from diagnostics.probe import SampleObservation
from diagnostics.report import Evidence, RuleCheck, Status


def deciding_rule(rules: list[RuleCheck]) -> RuleCheck | None:
    """The first fired rule in order of precedence: the one that sets the status."""
    return next((rule for rule in rules if rule.fired), None)


def _profile_text(evidence: Evidence) -> str | None:
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    raw = evidence.backward_signal_ratio_raw.median if evidence.backward_signal_ratio_raw else None
    if ratio is None:
        return None
    gain = f", {evidence.per_layer_gain:.3g}× per layer" if evidence.per_layer_gain else ""
    shown = f"{raw:.3g}× (width-corrected {ratio:.3g}×)" if raw is not None and \
        f"{raw:.3g}" != f"{ratio:.3g}" else f"{ratio:.3g}×"
    return (f"the backward signal at {evidence.deepest_layer} is {shown} that at "
            f"{evidence.shallowest_layer}{gain}")


def summarize(status: Status, rules: list[RuleCheck], evidence: Evidence,
              samples: list[SampleObservation], substituted_readouts: tuple[str, ...],
              optimizer: Optimizer = Optimizer.SGD) -> str:
    """The verdict's one sentence: the deciding rule, then what it measured and what to do."""
    text = _summary(status, rules, evidence, samples, substituted_readouts, optimizer)
    if evidence.closed_gate_layer is not None:
        text += (f" The gain {evidence.closed_gate_layer} (γ ≈ "
                 f"{evidence.closed_gate_scale or 0:.2g}, LayerScale) gates every layer below "
                 "it: they receive about γ of the signal until it moves, which it does in the "
                 "first steps (its own gradient is not small), so the depth profile is judged "
                 "below it.")
    return text


def _summary(status: Status, rules: list[RuleCheck], evidence: Evidence,
             samples: list[SampleObservation], substituted_readouts: tuple[str, ...],
             optimizer: Optimizer) -> str:
    rule = deciding_rule(rules)
    profile = _profile_text(evidence)
    if rule is None:
        extra = _readout_text(substituted_readouts)
        l1 = evidence.weight_grad_l1_ratio.median if evidence.weight_grad_l1_ratio else None
        if optimizer is Optimizer.ADAM and l1 is not None:
            judged = (f" ({profile} is not judged: Adam's steps do not scale with the "
                      "gradient's size)") if profile else ""
            return (f"Healthy: an Adam step at {evidence.first_weight_layer} changes the loss "
                    f"{l1:.3g}× as much as one at {evidence.last_weight_layer}, within the "
                    f"thresholds; no rule fired{judged}.{extra}")
        if optimizer is Optimizer.ADAM and profile:
            return (f"Healthy: {profile}; it is not judged: Adam's steps do not scale with the "
                    f"gradient's size; no rule fired.{extra}")
        if profile and evidence.signal_growth_normalized and _above_exploding(rules):
            return (f"Healthy: {profile}, above the exploding threshold, but every weight "
                    f"below {evidence.shallowest_layer} feeds a normalization "
                    "(scale-invariant), so the growth cannot blow the forward pass up, and a "
                    "large step there grows the weight's norm, not the output; no rule fired "
                    f"(torchvision ResNet-101/152 read 1.5e3-1.2e4 this way and train).{extra}")
        if profile:
            return f"Healthy: {profile}, within the thresholds; no rule fired.{extra}"
        return ("Healthy: no rule fired (fewer than two hidden layers with parameters to "
                f"compare).{extra}")
    if rule.rule == "relative_update":
        text = _relative_text(evidence, rule, optimizer)
    else:
        text = _RULE_TEXT[rule.rule](evidence, rule, samples)
    return f"{status.value.capitalize()} ({rule.rule}): {text}"


def _above_exploding(rules: list[RuleCheck]) -> bool:
    check = next((rule for rule in rules if rule.rule == "backward_signal_exploding"), None)
    return bool(check and check.value is not None and check.threshold is not None
                and check.value > check.threshold)


def _readout_text(substituted_readouts: tuple[str, ...]) -> str:
    if substituted_readouts:
        return (f" The readout {', '.join(substituted_readouts)} is zero-initialized: the "
                "body gets no gradient until it moves, so the body was probed with it at a "
                "fan-in initialization.")
    return ""


def _non_finite_text(evidence: Evidence, _rule: RuleCheck,
                     samples: list[SampleObservation]) -> str:
    bad_inputs = sorted({name for s in samples for name in s.nonfinite_inputs})
    if bad_inputs:
        return (f"gradients are NaN/Inf, but the sample inputs {', '.join(bad_inputs)} already "
                "hold NaN/Inf values; fix the inputs first.")
    where = evidence.first_nonfinite_forward or evidence.first_nonfinite_backward
    phase = "forward pass" if evidence.first_nonfinite_forward else "backward pass"
    located = f", first in the {phase} at {where}" if where else ""
    return f"{evidence.nonfinite_count} NaN/Inf values{located}."


def _no_gradient_text(evidence: Evidence, _rule: RuleCheck, _samples: list) -> str:
    where = evidence.gradient_stops_at
    if where == "the outputs":
        return ("no parameter receives any gradient: the loss does not depend differentiably "
                "on the outputs (an argmax, a rounding or a constant output), so nothing can "
                "learn.")
    return (f"no parameter receives any gradient: the gradient reaches {where} and stops "
            f"there — its output does not change with its input (a constant output such as a "
            f"softmax over one unit, a zero-width path), so nothing below it can ever learn.")


def _dead_text(evidence: Evidence, _rule: RuleCheck, _samples: list) -> str:
    return (f"layer {evidence.dead_layers_blocking[0]} is dead (no unit active on any sample), so "
            "every layer below it receives exactly zero gradient.")


def _rounding_text(evidence: Evidence, rule: RuleCheck, _samples: list) -> str:
    exact = evidence.rounding_noise_ratio_float64
    confirmed = (f"; in float64 it falls to {exact:.3g}, so it is rounding noise"
                 if exact is not None else "; it could not be re-measured in float64")
    return (f"the gradient below {evidence.rounding_noise_layer} is "
            f"{evidence.rounding_noise_ratio:.3g}× the gradient at it, float rounding level"
            f"{confirmed}: the loss is (nearly) invariant to that layer's input (e.g. mean(y²) "
            "or sum(y) of a normalized output is constant), so nothing can be said about the "
            "layers below. Use loss 'random_projection' (the default) or 'cross_entropy'.")


def _folded_text(evidence: Evidence, _rule: RuleCheck, _samples: list) -> str:
    names = evidence.folded_normalization
    return (f"the exporter folded BatchNorm into {len(names)} node(s) (e.g. {names[0]}), so "
            "this file is an un-normalized network, not the one that trains, and its gradients "
            f"say nothing reliable about training. To diagnose it, {FOLDING_ADVICE}.")


def _forward_text(evidence: Evidence, rule: RuleCheck, _samples: list) -> str:
    where = evidence.readout_layers[0] if evidence.readout_layers else "the output layer"
    return (f"the activations at {where} are {rule.value:.3g}× the inputs' RMS (threshold "
            f"{rule.threshold:g}×): the forward pass amplifies its input so much that a training "
            "loss on these outputs diverges in the first steps.")


def _profile_rule_text(evidence: Evidence, rule: RuleCheck, _samples: list) -> str:
    side = "above" if rule.rule.endswith("exploding") else "below"
    extra = (f"; {len(evidence.saturated_layers)} saturated layer(s)"
             if evidence.saturated_layers and side == "below" else "")
    return f"{_profile_text(evidence)} ({side} the threshold {rule.threshold:g}×){extra}."


# temporal_vanishing's detail names the cell it judged; the summary tells the two kinds apart.
UNGATED_CELL = "an ungated recurrent cell"


def _temporal_text(_evidence: Evidence, rule: RuleCheck, _samples: list) -> str:
    reach = (f"reaches back only {rule.value:.0f} steps of the sequence (threshold "
             f"{rule.threshold:.0f})")
    if UNGATED_CELL in rule.detail:
        return (f"the ungated recurrent cell's gradient {reach}: it cannot learn dependencies "
                "on the sequence's early steps. Gated cells (LSTM/GRU) carry them.")
    return (f"the gated recurrent cell's gradient {reach}, and the loss reads the last step "
            "only: SGD moves its forget gates by lr·g, and g from the early steps is a tiny "
            "fraction of g at the last, so it does not learn to carry them (Adam, which moves "
            "every gate by about lr, or chrono-initialized gates do).")


def _adam_epsilon_text(evidence: Evidence, rule: RuleCheck, _samples: list) -> str:
    return (f"the gradient of {evidence.first_weight_layer}'s weights is {rule.value:.3g} per "
            f"element (floor {rule.threshold:g}), far below Adam's ε = 1e-8: Adam's step "
            "lr·|g|/(|g|+ε) there is a tiny fraction of lr, so the first layers do not move "
            "and nothing rescales the net.")


def _weight_gradient_text(evidence: Evidence, rule: RuleCheck, _samples: list) -> str:
    return (f"an Adam step at {evidence.first_weight_layer} changes the loss {rule.value:.3g}× "
            f"as much as one at {evidence.last_weight_layer} (‖∂L/∂W‖₁ ratio, threshold "
            f"{rule.threshold:g}×): Adam moves every weight by ≈ lr, but the first layers' "
            "moves barely reach the output, so they do not learn.")


def _relative_text(evidence: Evidence, rule: RuleCheck, optimizer: Optimizer) -> str:
    name = "SGD" if optimizer is Optimizer.SGD else "Adam"
    return (f"one {name} step at the configured learning rate changes "
            f"{evidence.max_relative_step_parameter} by {rule.value:.3g}× its scale "
            f"(threshold {rule.threshold:g}×): the first step overwrites the weight.")


_RULE_TEXT = {
    "non_finite": _non_finite_text,
    "dead_layer": _dead_text,
    "no_gradient": _no_gradient_text,
    "rounding_noise": _rounding_text,
    "folded_batchnorm": _folded_text,
    "forward_scale_exploding": _forward_text,
    "backward_signal_exploding": _profile_rule_text,
    "backward_signal_vanishing": _profile_rule_text,
    "adam_epsilon": _adam_epsilon_text,
    "weight_gradient_vanishing": _weight_gradient_text,
    "temporal_vanishing": _temporal_text,
}
