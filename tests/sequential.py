"""A minimal LoadedModel around an nn.Sequential, for unit tests of the probe and the verdict
that should not depend on either loader."""

from __future__ import annotations

from torch import nn

from diagnostics.model import Activation, InputSpec, LayerInfo, LayerKind, LoadedModel, SourceInfo

ACTIVATIONS = {nn.ReLU: Activation.RELU, nn.Sigmoid: Activation.SIGMOID, nn.Tanh: Activation.TANH,
               nn.LeakyReLU: Activation.LEAKY_RELU, nn.GELU: Activation.GELU}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


def wrap(sequential: nn.Sequential, input_shape: tuple) -> LoadedModel:
    layers, params = [], {}
    children = list(sequential.named_children())
    watched = [(n, m) for n, m in children
               if type(m) in ACTIVATIONS or isinstance(m, NORMS)
               or next(m.parameters(False), None) is not None]
    for position, (name, module) in enumerate(watched):
        kinds = set()
        if next(module.parameters(False), None) is not None:
            kinds.add(LayerKind.PARAMETRIC)
        if isinstance(module, NORMS):
            kinds.add(LayerKind.NORMALIZATION)
        if type(module) in ACTIVATIONS:
            kinds.add(LayerKind.ACTIVATION)
        names = []
        for pname, param in module.named_parameters(recurse=False):
            params[f"{name}.{pname}"] = param
            names.append(f"{name}.{pname}")
        layers.append(LayerInfo(name, type(module).__name__, name, frozenset(kinds),
                                ACTIVATIONS.get(type(module)), tuple(names),
                                len(watched) - 1 - position))
    return LoadedModel(sequential, (InputSpec("x", (None, *input_shape[1:])),), ("y",),
                       tuple(layers), params, SourceInfo("spec", "0" * 64, "test"))


def mlp(depth: int, activation: type[nn.Module], width: int = 32, init=None) -> nn.Sequential:
    modules: list[nn.Module] = []
    for index in range(depth):
        linear = nn.Linear(width, width)
        if init is not None:
            init(linear)
        modules.append(linear)
        if index < depth - 1:
            modules.append(activation())
    return nn.Sequential(*modules)
