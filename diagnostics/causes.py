"""Why: the causes behind a verdict, each with the numbers that show it.

Causes are evidence, not verdicts: they name what in the model produces the measured profile
(saturating activations, dead units, initialization scale, plain depth, recurrent memory, low
precision), so a person can read the report without knowing the rules.
"""

from __future__ import annotations

import itertools
import math

from diagnostics import anatomy
from diagnostics.aggregate import cancelled_parameters
from diagnostics.config import DiagnosisConfig, ProbeDtype
from diagnostics.examination import Examination
from diagnostics.model import LayerKind, LoadedModel
from diagnostics.report import Cause, Flag, Status

# Verdicts with no failure to explain (inconclusive: the profile is noise or another graph).
_NO_FAILURE = frozenset({Status.HEALTHY, Status.INCONCLUSIVE})
# Output growth above which the loss starts far above the trivial one: on the trainability
# benchmark's tune half, the nets at 14.8x and more were still above 1.5x the trivial loss after
# 300 Adam steps, and nets at 16-950x trained within 3,000 (docs/trainability.md).
SLOW_START_GROWTH = 10.0


def find_causes(model: LoadedModel, found: Examination, config: DiagnosisConfig) -> list[Cause]:
    """Every cause the evidence shows, most direct first."""
    builders = (_saturation, _dead_units, _initialization, _plain_depth, _recurrent_memory,
                _low_precision, _small_readout, _large_output_scale)
    return [cause for build in builders if (cause := build(model, found, config)) is not None]


def _saturation(model, found, config) -> Cause | None:
    layers = found.layers
    saturated = {layer.name: _round(layer.activations.saturated_fraction.median)
                 for layer in layers if Flag.SATURATED in layer.flags and layer.activations
                 and layer.activations.saturated_fraction}
    hidden = [layer.name for layer in model.layers
              if layer.activation in anatomy.SATURATING and layer.depth > 0
              and not anatomy.in_unrolled_cell(model, layer)]
    if not saturated and not (hidden and found.verdict.status is Status.VANISHING):
        return None
    return Cause(
        id="saturating_activations",
        title=f"{len(hidden)} hidden sigmoid/tanh-like layer(s)"
              + (f", {len(saturated)} saturated" if saturated else ""),
        layers=[layer.name for layer in model.layers
                if layer.name in saturated or layer.name in hidden],
        evidence={"saturated_fraction": saturated, "hidden_saturating_layers": len(hidden),
                  "sigmoid_max_slope": 0.25,
                  "threshold": config.thresholds.saturated_layer_fraction},
    )


def _dead_units(model, found, config) -> Cause | None:
    rows = {layer.name: _round(layer.activations.dead_fraction.median) for layer in found.layers
            if (Flag.DEAD in layer.flags or Flag.DYING in layer.flags) and layer.activations
            and layer.activations.dead_fraction}
    if not rows:
        return None
    dead = [name for name, fraction in rows.items() if fraction == 1.0]
    return Cause(
        id="dead_units",
        title=(f"layer {dead[0]} is entirely dead: no gradient passes below it" if dead
               else f"{len(rows)} layer(s) with most ReLU units never active"),
        layers=list(rows),
        evidence={"dead_fraction": rows, "entirely_dead": dead,
                  "dying_threshold": config.thresholds.dying_layer_fraction},
    )


def _initialization(model, found, config) -> Cause | None:
    if found.verdict.status in _NO_FAILURE:
        return None
    gains = _signal_gains(model, found)
    off = [entry for entry in anatomy.init_plan(model)
           if not (1 / anatomy.INIT_TOLERANCE <= entry["ratio"] <= anatomy.INIT_TOLERANCE)]
    if not off:
        return None
    return Cause(
        id="initialization_scale",
        title=f"{len({entry['parameter'] for entry in off})} weight(s) off the fan-in rule for "
              "the activation after them",
        layers=[entry["layer"] for entry in off],
        evidence={"weights": {entry["parameter"]: {
            "measured_std": _round(entry["measured_std"]), "recommended": entry["scheme"],
            "recommended_std": _round(entry["std"]), "ratio": _round(entry["ratio"]),
            "backward_gain": gains.get(entry["layer"])} for entry in off}},
    )


def _signal_gains(model: LoadedModel, found: Examination) -> dict[str, float | None]:
    """Per layer with weights: ‖δ‖ at its output / ‖δ‖ at the next such layer above it."""
    signals = [(layer.name, layer.output_grad_norm.median)
               for index, layer in enumerate(found.layers)
               if anatomy.weight_of(model, model.layers[index]) is not None
               and layer.output_grad_norm and layer.output_grad_norm.median]
    return {lower: _round(below / above)
            for (lower, below), (_, above) in itertools.pairwise(signals)}


def _plain_depth(model, found, config) -> Cause | None:
    count = sum(1 for layer in model.layers if anatomy.weight_of(model, layer) is not None)
    normalized = any(LayerKind.NORMALIZATION in layer.kinds for layer in model.layers)
    depths = [layer.depth for layer in model.layers]
    chain = len(set(depths)) == len(depths)
    shallow = count < anatomy.DEEP_CHAIN
    # An unrolled recurrence is deep in time, not in layers (``recurrent_memory`` says so).
    if found.verdict.status in _NO_FAILURE or shallow or (normalized and not chain) \
            or model.unrolled_recurrence is not None:
        return None
    return Cause(
        id="plain_depth",
        title=f"{count} layers with weights in a plain stack without "
              + " or ".join([*([] if normalized else ["normalization"]),
                             *(["skip connections"] if chain else [])]),
        layers=[],
        evidence={"layers_with_weights": count, "normalization": normalized,
                  "skip_connections": not chain,
                  "per_layer_gain": found.verdict.evidence.per_layer_gain},
    )


def _recurrent_memory(model, found, config) -> Cause | None:
    for profile in found.temporal:
        if profile.status is Status.HEALTHY:
            continue
        return Cause(
            id="recurrent_memory",
            title=f"memory through time {profile.status}: effective horizon "
                  f"{profile.effective_horizon} of {len(profile.grad_norms)} steps",
            layers=[profile.input],
            evidence={"first_to_last_ratio": profile.first_to_last_ratio,
                      "decay_per_step": profile.decay_per_step,
                      "effective_horizon": profile.effective_horizon,
                      "steps": len(profile.grad_norms)},
        )
    return None


def _low_precision(model, found, config) -> Cause | None:
    under, over, total = 0.0, [], 0
    # An unrolled cell's per-step copies (and the first step's folded constant state) hold
    # what the recurrent node keeps inside its kernel: judged through time, not here.
    reports = [layer for layer, info in zip(found.layers, model.layers, strict=True)
               if not anatomy.in_unrolled_cell(model, info)]
    for layer in reports:
        noise = cancelled_parameters(layer)  # zero in exact arithmetic: nothing to underflow
        for param in layer.parameters:
            size = math.prod(param.shape) or 1
            total += size
            if param.name in noise:
                continue
            if param.fp16_underflow_fraction and param.fp16_underflow_fraction.median:
                under += param.fp16_underflow_fraction.median * size
            if (param.grad_max_abs.max or 0) > config.thresholds.fp16_max:
                over.append(param.name)
    flagged = [layer.name for layer in reports
               if Flag.FP16_UNDERFLOW in layer.flags or Flag.FP16_OVERFLOW in layer.flags]
    if not flagged or (config.dtype is ProbeDtype.FLOAT32 and
                       found.verdict.status is Status.HEALTHY):
        return None
    return Cause(
        id="low_precision",
        title=f"{under / total:.0%} of gradient entries below the float16 normal range"
              if total else "low-precision gradients",
        layers=flagged,
        evidence={"fp16_underflow_fraction": _round(under / total) if total else None,
                  "fp16_overflow_parameters": over, "probe_dtype": config.dtype.value,
                  "fp16_normal_min": config.thresholds.fp16_normal_min},
    )


def _small_readout(model, found, config) -> Cause | None:
    evidence = found.verdict.evidence
    scale = evidence.readout_scale
    if scale is None or scale >= config.thresholds.small_readout_fraction:
        return None
    heads = ", ".join(evidence.readout_layers)
    title = (f"zero-initialized head {heads}: the body receives no gradient until the head "
             "moves (expected for zero-init heads; it moves in the first step)" if scale == 0
             else f"small head {heads} ({scale:.2g}× a fan-in initialization): every hidden "
             "layer's gradient is scaled down alike until the head grows")
    return Cause(
        id="small_readout", title=title, layers=list(evidence.readout_layers),
        evidence={"readout_scale": _round(scale),
                  "threshold": config.thresholds.small_readout_fraction,
                  "body_probed_with_fan_in_head": scale == 0},
    )


def _large_output_scale(model, found, config) -> Cause | None:
    evidence = found.verdict.evidence
    growth = evidence.forward_growth.median if evidence.forward_growth else None
    if growth is None or not growth > SLOW_START_GROWTH:
        return None
    limit = config.forward_growth_limit
    where = evidence.readout_layers[0] if evidence.readout_layers else "the output layer"
    title = (f"output at {where} is {growth:.3g}x the inputs' RMS: a softmax over it is "
             "overconfident and a training loss starts far above the trivial one"
             + (", beyond the forward-scale threshold" if growth > limit else
                "; expect a slow start while training shrinks it, not a divergence"))
    return Cause(
        id="large_output_scale", title=title, layers=list(evidence.readout_layers),
        evidence={"forward_growth": _round(growth), "slow_start_above": SLOW_START_GROWTH,
                  "exploding_above": limit},
    )


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.4g}")
