"""Closed gates: a learned gain near zero on purpose that every deeper signal passes through.

CaiT's class-attention blocks add ``γ·attn(cls, patches)`` to the class token with LayerScale γ
at 1e-5, and the head reads the class token alone: the whole patch stream reaches the loss
through γ, so every layer below gets about γ of the signal. That is a gate meant to start
nearly closed, not a vanishing stack: γ's own gradient is not small, it opens in the first
steps, and what matters is whether the signal then gets through the layers below it. So the
depth profile is judged below the gate, as it is below a small readout.

A gain on a residual *branch* (ConvNeXt's ``x + γ·branch(x)``) is bypassed by the stream: the
layers below it keep the stream's gradient, so it is no gate. The two are told apart by what
was measured, not by the graph: below a closed gate the largest gradient is at most about γ
times the gain's own output gradient, below a bypassed gain it is about the same.
"""

from __future__ import annotations

import math

from diagnostics import anatomy
from diagnostics.model import LayerKind, LoadedModel
from diagnostics.report import LayerReport


def output_rms(layer: LayerReport) -> float:
    """RMS of the gradient at the layer's output (median over samples; 0 when not measured)."""
    norm = layer.output_grad_norm.median if layer.output_grad_norm is not None else None
    return (norm or 0.0) / math.sqrt(layer.output_numel or 1)


def gain_rms(model: LoadedModel, index: int) -> float | None:
    """RMS of a learned elementwise gain's values, or None when the layer is no such gain."""
    if not anatomy.is_gain(model, index):
        return None
    values = [model.parameters[name].detach() for name in model.layers[index].parameters
              if name in model.parameters]  # at least one: is_gain says so
    count = sum(v.numel() for v in values)
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in values) / max(count, 1))


def closed_gate(model: LoadedModel, layers: list[LayerReport],
                below_fraction: float) -> tuple[int, float] | None:
    """The shallowest gain with RMS γ < ``below_fraction`` below which every measured
    parametric layer's gradient RMS is under √γ × the gain's output gradient RMS (on a log
    scale, nearer the gated level γ than the bypassed level 1); with that γ. None if none."""
    gains = sorted((i for i in range(len(layers)) if layers[i].output_grad_norm is not None),
                   key=lambda i: layers[i].depth)
    for index in gains:
        gamma = gain_rms(model, index)
        top = output_rms(layers[index])
        if gamma is None or not 0 < gamma < below_fraction or top <= 0:
            continue
        deeper = [output_rms(layer) for i, layer in enumerate(layers)
                  if layer.depth > layers[index].depth
                  and LayerKind.PARAMETRIC in model.layers[i].kinds
                  # an insertion's output mixes the tokens' stream with the sequence's
                  and model.layers[i].op_type not in anatomy.INSERTIONS
                  and not anatomy.is_table(model, i) and layer.output_grad_norm is not None]
        if deeper and max(deeper) < math.sqrt(gamma) * top:
            return index, gamma
    return None
