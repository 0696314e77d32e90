"""Tensors -> numbers. Every reduction runs in float64.

A float32 L2 norm of a large but finite gradient overflows to inf and would fake a non-finite
verdict, so each tensor is cast to float64 once and all reductions are taken from that copy,
which is dropped before returning: nothing here keeps a tensor alive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diagnostics.model import Activation

# Families whose derivative is exactly zero on part of their domain: such units can die.
ZERO_SLOPE = frozenset({Activation.RELU, Activation.RELU6, Activation.HARDSWISH})


@dataclass(frozen=True)
class GradSummary:
    """Statistics of one gradient tensor. Norms are ``nan`` when the tensor is not finite."""

    norm: float
    rms: float
    mean_abs: float
    max_abs: float
    zero_fraction: float
    nonfinite_count: int
    numel: int
    fp16_underflow_fraction: float | None = None


@dataclass(frozen=True)
class ActivationSummary:
    """Statistics of a layer's forward output over the batch (axis 0)."""

    mean: float
    std: float
    saturated_fraction: float | None
    dead_fraction: float | None
    nonfinite_count: int
    numel_per_sample: int


def summarize_grad(grad: torch.Tensor, *, fp16_normal_min: float | None = None) -> GradSummary:
    """Summarize a gradient tensor.

    Args:
        grad: Any shape, any float dtype.
        fp16_normal_min: When given, also the fraction of non-zero entries whose magnitude is
            below it (they would lose precision or flush to zero in float16).

    Returns:
        The summary; norm/rms/mean_abs/max_abs are nan when any entry is NaN or Inf.
    """
    flat = grad.detach().reshape(-1)
    numel = flat.numel()
    if numel == 0:
        return GradSummary(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    wide = flat.to(torch.float64)
    sum_squares = float(torch.dot(wide, wide))
    zeros = int(numel - torch.count_nonzero(flat))
    if not math.isfinite(sum_squares):
        nonfinite = int(numel - int(torch.isfinite(flat).sum()))
        nan = float("nan")
        return GradSummary(nan, nan, nan, nan, zeros / numel, nonfinite, numel)
    magnitudes = wide.abs_()
    underflow = None
    if fp16_normal_min is not None:
        nonzero = numel - zeros
        small = int(torch.count_nonzero(magnitudes < fp16_normal_min)) - zeros
        underflow = small / nonzero if nonzero else 0.0
    return GradSummary(
        norm=math.sqrt(sum_squares),
        rms=math.sqrt(sum_squares / numel),
        mean_abs=float(magnitudes.sum()) / numel,
        max_abs=float(magnitudes.max()),
        zero_fraction=zeros / numel,
        nonfinite_count=0,
        numel=numel,
        fp16_underflow_fraction=underflow,
    )


def tensor_norm(tensor: torch.Tensor) -> float:
    """‖tensor‖₂ in float64 (nan if not finite)."""
    flat = tensor.detach().reshape(-1).to(torch.float64)
    return math.sqrt(float(torch.dot(flat, flat)))


def summarize_activation(
    output: torch.Tensor,
    activation: Activation | None,
    *,
    saturation_derivative: float,
    bounds: tuple[float, float] | None = None,
) -> ActivationSummary:
    """Summarize a forward output.

    Args:
        output: Shape (batch, ...); axis 0 is taken as the batch, every other position is a unit.
        activation: The family, for saturation (sigmoid-like) and dead units (ReLU-like).
        saturation_derivative: A unit is saturated where its derivative, relative to the
            family's largest derivative, is below this.
        bounds: Output bounds of a hard-clipping activation (hardtanh), if not the default.

    Returns:
        The summary; mean/std are nan when the output is not finite.
    """
    values = output.detach()
    numel = values.numel()
    per_sample = numel // values.shape[0] if values.dim() > 0 and values.shape[0] else numel
    if numel == 0:
        return ActivationSummary(0.0, 0.0, None, None, 0, 0)
    std, mean = torch.std_mean(values.to(torch.float64), unbiased=False)
    mean_value, std_value = float(mean), float(std)
    nonfinite = 0
    if not (math.isfinite(mean_value) and math.isfinite(std_value)):
        nonfinite = int(numel - int(torch.isfinite(values).sum()))
    saturated = _saturated_fraction(values, activation, saturation_derivative, bounds)
    dead = _dead_fraction(values, activation) if activation in ZERO_SLOPE else None
    return ActivationSummary(mean_value, std_value, saturated, dead, nonfinite, per_sample)


def _saturated_fraction(values: torch.Tensor, activation: Activation | None,
                        threshold: float, bounds: tuple[float, float] | None) -> float | None:
    # The derivative is read off the output, relative to the family's peak derivative.
    y = values.float()
    if activation is Activation.SIGMOID:
        flat = y * (1 - y) / 0.25 < threshold
    elif activation is Activation.TANH:
        flat = 1 - y * y < threshold
    elif activation is Activation.SOFTSIGN:
        flat = (1 - y.abs()) ** 2 < threshold
    elif activation is Activation.LOG_SIGMOID:
        flat = 1 - torch.exp(y) < threshold
    elif activation is Activation.HARDTANH:
        low, high = bounds or (-1.0, 1.0)
        flat = (y <= low) | (y >= high)
    elif activation is Activation.HARDSIGMOID:
        flat = (y <= 0) | (y >= 1)
    else:
        return None
    return float(torch.count_nonzero(flat)) / flat.numel()


def _dead_fraction(values: torch.Tensor, activation: Activation | None) -> float:
    # A unit (every non-batch position) is dead when its derivative is zero for every sample.
    if values.dim() == 0:
        return float(values.item() == 0)
    active = values > 0 if activation is not Activation.HARDSWISH else values != 0
    if activation is Activation.RELU6:
        active &= values < 6
    alive = active.any(dim=0)
    return 1.0 - float(torch.count_nonzero(alive)) / alive.numel()
