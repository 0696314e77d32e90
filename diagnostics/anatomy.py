"""Read-only facts about a loaded model's structure that causes, verdict and remedies share.

Which weight a layer has and how it is laid out (fan-in, fan-out), which activation feeds or
follows it, which layers are readouts or lookup tables, what initialization each weight would
get from the fan-in rule for its activation and how far it is from it. Nothing here changes a
model; the edits that do live in :mod:`diagnostics.remedies.edits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diagnostics.model import Activation, LayerInfo, LayerKind, LoadedModel

# How each ReLU-like or smooth family wants its feeding weights scaled (gain² · 1/fan_in).
_HE = {Activation.RELU, Activation.RELU6, Activation.GELU, Activation.SILU, Activation.MISH,
       Activation.HARDSWISH, Activation.ELU, Activation.CELU, Activation.SOFTPLUS}
_GLOROT = {Activation.TANH, Activation.SOFTSIGN, Activation.HARDTANH}
SIGMOID_LIKE = {Activation.SIGMOID, Activation.HARDSIGMOID, Activation.LOG_SIGMOID}
SATURATING = _GLOROT | SIGMOID_LIKE


def following_activation(model: LoadedModel, index: int) -> Activation | str | None:
    """The activation that consumes layer ``index``'s output, looking past bias-only layers.

    Returns the family, ``"normalization"`` when a normalization comes first, or None.
    """
    for layer in model.layers[index + 1:]:
        if LayerKind.NORMALIZATION in layer.kinds:
            return "normalization"
        if layer.activation is not None:
            return layer.activation
        if any(model.parameters[name].dim() >= 2 for name in layer.parameters
               if name in model.parameters):
            return None
    return None


def weight_of(model: LoadedModel, layer: LayerInfo) -> tuple[str, nn.Parameter] | None:
    """The layer's weight matrix or kernel (first parameter with two or more dims)."""
    for name in layer.parameters:
        param = model.parameters.get(name)
        if param is not None and param.dim() >= 2:
            return name, param
    return None


@dataclass(frozen=True)
class WeightLayout:
    """How a weight maps inputs to output units: its fans and the axes that sum over inputs."""

    fan_in: int
    fan_out: int
    input_axes: tuple[int, ...]


def weight_layout(model: LoadedModel, layer: LayerInfo, param: torch.Tensor) -> WeightLayout | None:
    """The layout of a weight, by the module or op that uses it; None where unknown."""
    module = model.module.get_submodule(layer.module_path)
    rest = tuple(range(2, param.dim()))
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and param is module.weight:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(param)
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        return WeightLayout(fan_in, fan_out, (0, *rest) if transposed else (1, *rest))
    if param.dim() == 2 and getattr(module, "weight", None) is param and hasattr(module, "trans_b"):
        # Gemm kept in its ONNX layout: B is (in, out), or (out, in) with transB.
        if module.trans_b:
            return WeightLayout(int(param.shape[1]), int(param.shape[0]), (1,))
        return WeightLayout(int(param.shape[0]), int(param.shape[1]), (0,))
    if layer.op_type == "MatMul" and param.dim() == 2:
        return WeightLayout(int(param.shape[0]), int(param.shape[1]), (0,))
    return None


def preceding_activation(model: LoadedModel, index: int) -> Activation | None:
    """The activation whose output this layer consumes (the watched layer just before it)."""
    return model.layers[index - 1].activation if index > 0 else None


# Mean output of an activation at its centre of symmetry: what a layer fed by it must subtract
# so its pre-activations start centred (sigmoid(x) = 1/2 + tanh(x/2)/2). Keyed by what
# preceding_activation returns: None (no activation before the layer) has mean 0 like the rest.
INPUT_MEANS: dict[Activation | None, float] = {Activation.SIGMOID: 0.5, Activation.HARDSIGMOID: 0.5}


def recommended_init(activation: Activation | str | None, fan_in: int, fan_out: int,
                     slope: float = 0.01) -> tuple[str, float]:
    """(scheme, std) for weights feeding ``activation``.

    The derivation: docs/guide/math.md §Variance propagation and initialization.
    """
    if activation in (Activation.LEAKY_RELU, Activation.PRELU):
        slope = 0.25 if activation is Activation.PRELU else slope
        return "kaiming_normal", math.sqrt(2.0 / ((1 + slope**2) * fan_in))
    if activation in _HE:
        return "kaiming_normal", math.sqrt(2.0 / fan_in)
    if activation is Activation.SELU:
        return "lecun_normal", math.sqrt(1.0 / fan_in)
    if activation in SIGMOID_LIKE:
        # sigmoid(x) = (1 + tanh(x/2)) / 2: its slope is a quarter of tanh's, hence Glorot × 4.
        return "xavier_normal(gain=4)", 4.0 * math.sqrt(2.0 / (fan_in + fan_out))
    return "xavier_normal", math.sqrt(2.0 / (fan_in + fan_out))


def is_bias(model: LoadedModel, layer: LayerInfo, param: torch.Tensor) -> bool:
    module = model.module.get_submodule(layer.module_path)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        return param is bias
    return LayerKind.NORMALIZATION not in layer.kinds


def feeding_layer(model: LoadedModel, index: int) -> int | None:
    """The nearest earlier layer with a weight matrix or kernel (the one feeding an activation)."""
    for earlier in range(index - 1, -1, -1):
        if weight_of(model, model.layers[earlier]) is not None:
            return earlier
    return None


def bias_of(model: LoadedModel, index: int) -> tuple[str, torch.Tensor] | None:
    """The bias that adds to layer ``index``'s weight output: its own or a following bias Add."""
    for layer in model.layers[index:index + 2]:
        for name in layer.parameters:
            param = model.parameters.get(name)
            if param is not None and param.dim() == 1 and is_bias(model, layer, param):
                return name, param
    return None


# Ratio of measured to recommended weight std beyond which a layer is called mis-initialized.
INIT_TOLERANCE = 1.5


# A plain chain at least this deep (layers with weights) is "deep" for normalization/residuals.
DEEP_CHAIN = 8


def init_plan(model: LoadedModel) -> list[dict]:
    """Per weight: measured std, the recommended scheme and std, and their ratio."""
    plan = []
    for index, layer in enumerate(model.layers):
        found = weight_of(model, layer)
        if found is None:
            continue
        name, param = found
        layout = weight_layout(model, layer, param)
        following = following_activation(model, index)
        if layout is None or following == "normalization" or param.numel() < 2:
            continue
        scheme, std = recommended_init(following, layout.fan_in, layout.fan_out)
        measured = float(param.detach().double().std())
        input_mean = INPUT_MEANS.get(preceding_activation(model, index), 0.0)
        plan.append({"layer": layer.name, "parameter": name, "scheme": scheme,
                     "std": std, "measured_std": measured, "input_mean": input_mean,
                     "ratio": measured / std if std else math.inf,
                     "activation": following.value if isinstance(following, Activation) else None})
    return plan


def in_unrolled_cell(model: LoadedModel, layer: LayerInfo) -> bool:
    """Whether ``layer`` is one step's copy of a recurrent cell the exporter unrolled: its
    tanh/sigmoid is the cell's own, judged through time, not a hidden layer of a deep stack."""
    unrolled = model.unrolled_recurrence
    return unrolled is not None and layer.module_path in unrolled.cell_paths


def has_normalization(model: LoadedModel) -> bool:
    return any(LayerKind.NORMALIZATION in layer.kinds for layer in model.layers)


def weighted_count(model: LoadedModel) -> int:
    return sum(1 for layer in model.layers if weight_of(model, layer) is not None)


def is_chain(model: LoadedModel) -> bool:
    depths = [layer.depth for layer in model.layers]
    return len(set(depths)) == len(depths)


# Table lookups: their output scale is whatever the table was initialized to, and a
# normalization after them divides the gradient by it, so ‖δ‖ at a lookup says nothing about
# the Jacobians of the hidden stack (BERT's embeddings at std 0.002 would read as "exploding").
_LOOKUPS = frozenset({"Gather", "Embedding"})
# Elementwise products with a learned tensor: LayerScale (ONNX Mul by γ; timm's modules).
_GAINS = frozenset({"Mul", "LayerScale", "LayerScale2d"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul"})
# Ops that insert learned tokens into a sequence (class, distillation, register tokens): each
# moves only at its own position and is read through the normalizations after it, like a table.
INSERTIONS = frozenset({"Concat", "Expand"})


def readout_indices(model: LoadedModel) -> list[int]:
    """The layers with a weight matrix or kernel nearest the outputs (smallest depth).

    None when a normalization or a learned elementwise gain sits between them and the outputs:
    the model then returns a hidden state — a normalized one, or a residual stream whose last
    branch ends in a LayerScale gain (ConvNeXt, CaiT backbones: ``x + γ·branch(x)``, γ at
    1e-6) — and its last weight layer is a hidden layer, not a readout. Inside such a branch
    the gradient is γ times the stream's, so the profile must end on the stream: at the gain.
    """
    # A gain's tensor may have several dimensions (γ of shape [C, 1, 1]): it is still a gain.
    weighted = [i for i, layer in enumerate(model.layers)
                if weight_names(model, i) and layer.op_type not in _LOOKUPS | _GAINS]
    if not weighted:
        return []
    nearest = min(model.layers[i].depth for i in weighted)
    if any(layer.depth < nearest and (LayerKind.NORMALIZATION in layer.kinds
                                      or is_gain(model, index))
           for index, layer in enumerate(model.layers)):
        return []
    return [i for i in weighted if model.layers[i].depth == nearest]


def is_gain(model: LoadedModel, index: int) -> bool:
    """An elementwise product with a learned tensor (LayerScale)."""
    layer = model.layers[index]
    return layer.op_type in _GAINS and any(name in model.parameters for name in layer.parameters)


def is_table(model: LoadedModel, index: int) -> bool:
    """A lookup table, a table added to the signal (position/token-type embeddings), or tokens
    inserted into the sequence (class, distillation, register tokens)."""
    layer = model.layers[index]
    added = layer.op_type in INSERTIONS | {"Add"} and bool(weight_names(model, index))
    return layer.op_type in _LOOKUPS or added


def weight_names(model: LoadedModel, index: int) -> list[str]:
    """The layer's weight matrices and kernels (parameters with two or more dimensions; for an
    elementwise op, two or more that are not 1: an added table [1, T, D] is one, a bias
    [1, V] or a LayerScale γ [C, 1, 1] is not)."""
    layer = model.layers[index]
    elementwise = layer.op_type in _ELEMENTWISE
    return [name for name in layer.parameters if name in model.parameters
            and _axes(model.parameters[name], elementwise) >= 2]


def _axes(param: torch.Tensor, varying_only: bool) -> int:
    return sum(1 for size in param.shape if size > 1) if varying_only else param.dim()
