"""The scale a weight is meant to have: the norm a fan-in initialization of its shape gives.

Relative updates ‖Δw‖/‖w‖ are meaningless for parameters initialized at or near zero on purpose
(timm's class tokens at std 1e-6, zero-initialized heads, LayerScale): their current norm is
not the scale they will reach. A fan-in (LeCun, unit-gain) initialization, std = 1/√fan_in, is
the smallest scale a weight that carries signal has, so steps are judged against the larger of
the two (README, "Verdict rules": relative_update).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diagnostics.anatomy import weight_layout
from diagnostics.model import LayerInfo, LoadedModel


def fan_in(model: LoadedModel, layer: LayerInfo, param: torch.Tensor) -> int | None:
    """Inputs summed into each output unit, from the op's layout, else torch's convention."""
    layout = weight_layout(model, layer, param)
    if layout is not None:
        return layout.fan_in
    if param.dim() < 2:
        return None
    return nn.init._calculate_fan_in_and_fan_out(param)[0] or None


def reference_norm(model: LoadedModel, layer: LayerInfo, param: torch.Tensor) -> float | None:
    """‖W‖ of a fan-in initialization of ``param``'s shape: √(numel / fan_in)."""
    fans = fan_in(model, layer, param)
    if not fans:
        return None
    return math.sqrt(param.numel() / fans)
