"""Edits that remedies make to a copy of a loaded model: swap activations, re-initialize, rescale.

Each edit works on the module tree, so the same code serves ONNX models (onnx2torch GraphModules,
where every ONNX node is a submodule the fx graph calls by path) and spec models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from diagnostics import anatomy
from diagnostics.model import Activation, LayerInfo, LoadedModel


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
            found = anatomy.weight_of(model, layer)
            if found is None or found[0] not in plan:
                continue
            name, param = found
            choice = plan[name]
            sample = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(sample.to(param.dtype) * choice.std)
            bias = anatomy.bias_of(model, index)
            if bias is None:
                continue
            layout = anatomy.weight_layout(model, layer, param)
            if choice.input_mean and layout is not None:
                shift = param.sum(dim=layout.input_axes) * choice.input_mean
                if shift.shape == bias[1].shape:
                    bias[1].copy_(-shift)
                    continue
            bias[1].zero_()


def swap_activation(model: LoadedModel, layer: LayerInfo, replacement: nn.Module,
                    activation: Activation) -> LayerInfo:
    """Replace the activation submodule at ``layer.module_path``; returns the updated LayerInfo."""
    parent_path, _, child = layer.module_path.rpartition(".")
    parent = model.module.get_submodule(parent_path) if parent_path else model.module
    setattr(parent, child, replacement)
    return replace(layer, activation=activation, op_type=type(replacement).__name__)


def replace_layers(model: LoadedModel, updated: dict[int, LayerInfo]) -> None:
    model.layers = tuple(updated.get(i, layer) for i, layer in enumerate(model.layers))


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

    def hook(module: nn.Linear | nn.modules.conv._ConvNd, _args: object,
             output: torch.Tensor) -> torch.Tensor:
        unit_axis = 1 if isinstance(module, nn.modules.conv._ConvNd) else output.dim() - 1
        if output.dim() < 2:
            return output
        with torch.no_grad():
            wide = output.double()
            reduce_axes = [axis for axis in range(output.dim()) if axis != unit_axis]
            bias: torch.Tensor | None = module.bias
            # Centre each unit (a per-unit bias is cheap to fit), but scale the whole layer by
            # one number: per-unit scales fitted on a small batch are noisy, and the noise
            # compounds into a spurious gain over depth.
            mean = wide.mean(dim=reduce_axes) if bias is not None else torch.zeros(
                output.shape[unit_axis], dtype=torch.float64)
            broadcast = [1] * output.dim()
            broadcast[unit_axis] = -1
            centred = wide - mean.view(broadcast)
            std = float(centred.pow(2).mean().sqrt())
            std = std if std > 1e-12 else 1.0
            module.weight.div_(std)
            if bias is not None:
                bias.sub_(mean.to(bias.dtype)).div_(std)
            return (centred / std).to(output.dtype)

    for layer in model.layers:
        module = model.module.get_submodule(layer.module_path)
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and \
                (weight := anatomy.weight_of(model, layer)) is not None:
            handles.append(module.register_forward_hook(hook))
            touched.append(weight[0])
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
