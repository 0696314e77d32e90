"""Training-time remedies: gradient clipping, a lower learning rate, loss scaling for low
precision. They change the optimizer step, not the model.
"""

from __future__ import annotations

import math

from diagnostics.aggregate import cancelled_parameters
from diagnostics.remedies.candidates import Candidate, Context, round_or_none
from diagnostics.report import Flag, LayerReport, Remedy, Status


def total_grad_norm(layers: list[LayerReport]) -> float | None:
    squares = [p.grad_norm.median ** 2 for layer in layers for p in layer.parameters
               if p.grad_norm.median is not None]
    return math.sqrt(sum(squares)) if squares else None


def clip_gradients(context: Context) -> Candidate | None:
    layers = context.found.layers
    verdict = context.found.verdict
    temporal_trouble = Flag.TEMPORAL_EXPLODING in verdict.flags or \
        Flag.TEMPORAL_VANISHING in verdict.flags
    if verdict.status is not Status.EXPLODING and not temporal_trouble:
        return None
    total = total_grad_norm(layers)
    g2w = verdict.evidence.max_grad_to_weight
    params: dict[str, float | None]
    if not total or not math.isfinite(total):
        params = {"max_norm": 1.0, "norm_type": 2.0}
        rationale = ("gradients are not finite, so no norm can be measured: clip at the common "
                     "max_norm 1.0 and fix the cause (see the other remedies)")
        clipped = None
    else:
        # Clip so that the largest relative update at learning rate 1 is at most 1.
        scale = min(1.0, 1.0 / g2w) if g2w else 1.0
        max_norm = float(f"{total * scale:.2g}")
        clipped = min(total, max_norm)
        params = {"max_norm": max_norm, "norm_type": 2.0,
                  "measured_total_grad_norm": round_or_none(total),
                  "clipped_update_norm": round_or_none(clipped),
                  "clipped_max_grad_to_weight":
                      round_or_none(g2w * clipped / total) if g2w else None}
        largest = (f" and the largest ‖∂L/∂W‖/‖W‖ is {g2w:.3g} "
                   f"({verdict.evidence.max_grad_to_weight_parameter})" if g2w else "")
        rationale = (f"the total gradient norm is {total:.3g}{largest}; clipping at "
                     f"max_norm={max_norm:g} bounds every step to at most the weight's own size at "
                     "learning rate 1 (Pascanu et al. 2013)")
    remedy = Remedy(
        id="clip-gradients", rank=0,
        title="Clip the gradient norm: torch.nn.utils.clip_grad_norm_(model.parameters(), "
              f"max_norm={params['max_norm']:g})",
        rationale=rationale[0].upper() + rationale[1:] + ". Clipping bounds the step; it does "
                  "not repair the signal profile.",
        params=params,
    )
    return Candidate(remedy, None, "a training-time safeguard: it changes the update, not the "
                     "gradients a sample pass measures" + (
                         f"; clipped update norm {clipped:.3g}" if clipped else ""))


def lower_learning_rate(context: Context) -> Candidate | None:
    layers = context.found.layers
    evidence = context.found.verdict.evidence
    config = context.config
    step = evidence.max_relative_step
    if not step or step <= config.thresholds.max_relative_step:
        return None
    # Scale the rate so that the first step moves the worst weight by about 1e-3 of its scale.
    lr = float(f"{config.learning_rate * 1e-3 / step:.2g}")
    remedy = Remedy(
        id="lower-learning-rate", rank=0,
        title=f"Use a learning rate of at most {lr:g} (with warmup)",
        rationale=(f"At learning rate {config.learning_rate:g} the first "
                   f"{'Adam' if config.optimizer == 'adam' else 'SGD'} step changes "
                   f"{evidence.max_relative_step_parameter} by {step:.3g}× its scale; a relative "
                   f"step of about 1e-3 needs lr ≈ {config.learning_rate:g} × 1e-3 / {step:.3g}. "
                   "Warm the learning rate up over the first steps (post-LN transformers "
                   "especially)."),
        layers=[layer.name for layer in layers if Flag.LARGE_UPDATE in layer.flags],
        params={"learning_rate": lr, "warmup": True},
    )
    return Candidate(remedy, None, "a training-time setting: a sample pass has no learning rate")


def loss_scaling(context: Context) -> Candidate | None:
    layers = context.found.layers
    verdict = context.found.verdict
    config = context.config
    flagged = [layer for layer in layers if Flag.FP16_UNDERFLOW in layer.flags]
    half = config.dtype.value == "float16"
    float32_vanishing = config.dtype.value == "float32" and verdict.status is Status.VANISHING
    if not flagged or not (half or float32_vanishing):
        return None
    means = [p.grad_mean_abs.median for layer in layers for p in layer.parameters
             if p.grad_mean_abs.median and p.name not in cancelled_parameters(layer)]
    peaks = [p.grad_max_abs.max for layer in layers for p in layer.parameters if p.grad_max_abs.max]
    if not means or not peaks:
        return None
    thresholds = config.thresholds
    needed = max(0, math.ceil(math.log2(thresholds.fp16_normal_min / min(means))))
    room = math.floor(math.log2(thresholds.fp16_max / max(peaks)))
    exponent = min(needed, room, 24)
    fits = needed <= room
    remedy = Remedy(
        id="loss-scaling", rank=0,
        title=(f"Use dynamic loss scaling (torch.amp.GradScaler, init_scale=2**{exponent})"
               if fits else "Train in bfloat16 rather than float16"),
        rationale=(f"In {len(flagged)} layer(s) most gradient entries lie below float16's normal "
                   f"range ({thresholds.fp16_normal_min:g}); the smallest mean |gradient| of a "
                   f"parameter is {min(means):.3g}. "
                   + (f"Scaling the loss by 2**{exponent} lifts it into range while the largest "
                      f"entry ({max(peaks):.3g}) stays below {thresholds.fp16_max:g}."
                      if fits else
                      f"No single scale fits: lifting the smallest by 2**{needed} would overflow "
                      f"the largest ({max(peaks):.3g}); bfloat16 keeps float32's exponent range.")),
        layers=[layer.name for layer in flagged],
        params={"grad_scaler_init_scale": 2 ** exponent, "dtype": "float16" if fits else
                "bfloat16", "needed_scale_exponent": needed, "headroom_exponent": room},
    )
    return Candidate(remedy, None, "a training-time setting: the sample pass measures the "
                     "gradients it would scale")
