"""Edits that remedies make to a copy of a loaded model: swap activations, re-initialize, rescale.

Each edit works on the module tree, so the same code serves ONNX models (onnx2torch GraphModules,
where every ONNX node is a submodule the fx graph calls by path) and spec models.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from diagnostics.model import Activation, LayerInfo, LayerKind, LoadedModel

# How each ReLU-like or smooth family wants its feeding weights scaled (gain² · 1/fan_in).
_HE = {Activation.RELU, Activation.RELU6, Activation.GELU, Activation.SILU, Activation.MISH,
       Activation.HARDSWISH, Activation.ELU, Activation.CELU, Activation.SOFTPLUS}
_GLOROT = {Activation.TANH, Activation.SOFTSIGN, Activation.HARDTANH}
SIGMOID_LIKE = {Activation.SIGMOID, Activation.HARDSIGMOID, Activation.LOG_SIGMOID}
SATURATING = _GLOROT | SIGMOID_LIKE


def copy_model(model: LoadedModel) -> LoadedModel:
    """A deep copy whose ``parameters`` point at the copy's tensors."""
    memo: dict[int, object] = {}
    module = copy.deepcopy(model.module, memo)
    params = {name: memo[id(param)] for name, param in model.parameters.items()}
    return replace(model, module=module, parameters=params)  # type: ignore[arg-type]


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
# so its pre-activations start centred (sigmoid(x) = 1/2 + tanh(x/2)/2).
INPUT_MEANS = {Activation.SIGMOID: 0.5, Activation.HARDSIGMOID: 0.5}


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


@dataclass(frozen=True)
class InitChoice:
    """A weight's new scale and, for layers fed by a non-centred activation, the input mean to
    cancel with the bias."""

    std: float
    input_mean: float = 0.0


def reinitialize(model: LoadedModel, plan: dict[str, InitChoice], seed: int) -> None:
    """Draw each named weight from N(0, std²) (seeded); set the same layers' biases to zero, or to
    −input_mean·W·1 so that pre-activations start centred."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            found = weight_of(model, layer)
            if found is None or found[0] not in plan:
                continue
            name, param = found
            choice = plan[name]
            sample = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(sample.to(param.dtype) * choice.std)
            bias = bias_of(model, index)
            if bias is None:
                continue
            layout = weight_layout(model, layer, param)
            if choice.input_mean and layout is not None:
                shift = param.sum(dim=layout.input_axes) * choice.input_mean
                if shift.shape == bias[1].shape:
                    bias[1].copy_(-shift)
                    continue
            bias[1].zero_()


def _is_bias(model: LoadedModel, layer: LayerInfo, param: torch.Tensor) -> bool:
    module = model.module.get_submodule(layer.module_path)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        return param is bias
    return LayerKind.NORMALIZATION not in layer.kinds


def swap_activation(model: LoadedModel, layer: LayerInfo, replacement: nn.Module,
                    activation: Activation) -> LayerInfo:
    """Replace the activation submodule at ``layer.module_path``; returns the updated LayerInfo."""
    parent_path, _, child = layer.module_path.rpartition(".")
    parent = model.module.get_submodule(parent_path) if parent_path else model.module
    setattr(parent, child, replacement)
    return replace(layer, activation=activation, op_type=type(replacement).__name__)


def replace_layers(model: LoadedModel, updated: dict[int, LayerInfo]) -> None:
    model.layers = tuple(updated.get(i, layer) for i, layer in enumerate(model.layers))


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
            if param is not None and param.dim() == 1 and _is_bias(model, layer, param):
                return name, param
    return None


def rescale_data_dependent(model: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """LSUV-style data-dependent initialization in one forward pass (Mishkin & Matas 2015;
    per-unit centering as in Salimans & Kingma 2016).

    Each layer with a torch-layout weight (Linear, Conv) gets its output units rescaled to unit
    variance over the sample batch and, where it has a bias, centred; the hook returns the
    rescaled output so every later layer is fitted to what it will really see.

    Returns:
        Names of the weights rescaled.
    """
    handles, touched = [], []

    def hook(module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        unit_axis = 1 if isinstance(module, nn.modules.conv._ConvNd) else output.dim() - 1
        if output.dim() < 2:
            return output
        with torch.no_grad():
            wide = output.double()
            reduce_axes = [axis for axis in range(output.dim()) if axis != unit_axis]
            has_bias = getattr(module, "bias", None) is not None
            # Centre each unit (a per-unit bias is cheap to fit), but scale the whole layer by
            # one number: per-unit scales fitted on a small batch are noisy, and the noise
            # compounds into a spurious gain over depth.
            mean = wide.mean(dim=reduce_axes) if has_bias else torch.zeros(
                output.shape[unit_axis], dtype=torch.float64)
            broadcast = [1] * output.dim()
            broadcast[unit_axis] = -1
            centred = wide - mean.view(broadcast)
            std = float(centred.pow(2).mean().sqrt())
            std = std if std > 1e-12 else 1.0
            module.weight.div_(std)
            if has_bias:
                module.bias.sub_(mean.to(module.bias.dtype)).div_(std)
            return (centred / std).to(output.dtype)

    for layer in model.layers:
        module = model.module.get_submodule(layer.module_path)
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and \
                weight_of(model, layer) is not None:
            handles.append(module.register_forward_hook(hook))
            touched.append(weight_of(model, layer)[0])
    try:
        with torch.no_grad():
            model.module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return touched


def chrono_initialize(module: nn.Module, horizon: int, generator: torch.Generator) -> bool:
    """Chrono initialization (Tallec & Ollivier 2018) of an LSTM's or GRU's gate biases.

    LSTM: forget-gate bias log(U[1, horizon - 1]) and input-gate bias its negative; GRU: the
    update gate (which keeps the old state) gets log(U[1, horizon - 1]). Time constants then
    spread up to ``horizon`` steps. Returns False for other modules.
    """
    if not isinstance(module, (nn.LSTM, nn.GRU)) or not module.bias:
        return False
    hidden = module.hidden_size
    upper = max(float(horizon) - 1.0, 2.0)
    with torch.no_grad():
        for name, bias in module.named_parameters():
            if not name.startswith("bias_"):
                continue
            timescale = torch.log(1 + (upper - 1) * torch.rand(hidden, generator=generator))
            bias.zero_()
            if name.startswith("bias_ih"):
                if isinstance(module, nn.LSTM):  # gates i, f, g, o
                    bias[hidden:2 * hidden] = timescale
                    bias[:hidden] = -timescale
                else:  # gates r, z, n
                    bias[hidden:2 * hidden] = timescale
    return True
