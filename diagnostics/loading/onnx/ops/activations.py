"""Element-wise activations and functions onnx2torch 1.5.15 lacks or gets wrong.

Gelu-20 (both ``approximate`` modes; the dynamo exporter emits it for every transformer MLP),
Mish-18/22, Swish-24, ThresholdedRelu-10/22, Shrink-9 and the hyperbolic functions. Each is a
small module so the probe sees one call per ONNX node, and each differentiates through plain
torch ops (the backward of the activation a user trained with). ``Selu`` replaces the stock
converter, which raises for non-default ``alpha`` or ``gamma``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping
from diagnostics.loading.onnx.ops.registry import converter


class OnnxGelu(nn.Module, OnnxToTorchModule):
    """GELU, exact (erf) or with the tanh approximation."""

    def __init__(self, approximate: str) -> None:
        """``approximate`` is ``"none"`` or ``"tanh"`` as in the ONNX attribute."""
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise NotImplementedError(f"Gelu approximate={approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(x)."""
        return F.gelu(x, approximate=self.approximate)


class OnnxSwish(nn.Module, OnnxToTorchModule):
    """Swish: ``x * sigmoid(alpha * x)``."""

    def __init__(self, alpha: float) -> None:
        """``alpha`` scales the gate's input (1.0 is SiLU)."""
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Swish(x)."""
        return x * torch.sigmoid(self.alpha * x)


class OnnxThresholdedRelu(nn.Module, OnnxToTorchModule):
    """``x`` where ``x > alpha``, else 0."""

    def __init__(self, alpha: float) -> None:
        """Threshold ``alpha``."""
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ThresholdedRelu(x)."""
        return torch.where(x > self.alpha, x, torch.zeros_like(x))


class OnnxShrink(nn.Module, OnnxToTorchModule):
    """``x + bias`` below ``-lambd``, ``x - bias`` above ``lambd``, else 0."""

    def __init__(self, lambd: float, bias: float) -> None:
        """Shrink with threshold ``lambd`` and offset ``bias``."""
        super().__init__()
        self.lambd, self.bias = lambd, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shrink(x), in the input's dtype (integer inputs stay integer)."""
        zero = torch.zeros_like(x)
        low = torch.where(x < -self.lambd, x + self.bias, zero)
        return torch.where(x > self.lambd, x - self.bias, low).to(x.dtype)


class OnnxFunction(nn.Module, OnnxToTorchModule):
    """A parameterless element-wise torch function (Mish, sinh, ...)."""

    _FUNCTIONS: ClassVar[dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
        "Mish": F.mish, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
        "Acosh": torch.acosh, "Atanh": torch.atanh,
    }

    def __init__(self, op_type: str) -> None:
        """The function named by the ONNX ``op_type``."""
        super().__init__()
        self.op_type = op_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x)."""
        return self._FUNCTIONS[self.op_type](x)


def _result(node: OnnxNode, module: nn.Module) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))


@converter("Gelu", [20])
def convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Gelu-20."""
    del graph
    return _result(node, OnnxGelu(node.attributes.get("approximate", "none")))


@converter("Swish", [24])
def convert_swish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Swish-24."""
    del graph
    return _result(node, OnnxSwish(float(node.attributes.get("alpha", 1.0))))


@converter("ThresholdedRelu", [10, 22])
def convert_thresholded_relu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ThresholdedRelu-10/22."""
    del graph
    return _result(node, OnnxThresholdedRelu(float(node.attributes.get("alpha", 1.0))))


@converter("Shrink", [9])
def convert_shrink(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Shrink-9."""
    del graph
    attributes = node.attributes
    return _result(node, OnnxShrink(float(attributes.get("lambd", 0.5)),
                                    float(attributes.get("bias", 0.0))))


@converter("Mish", [18, 22])
@converter("Sinh", [9, 22])
@converter("Cosh", [9, 22])
@converter("Asinh", [9, 22])
@converter("Acosh", [9, 22])
@converter("Atanh", [9, 22])
def convert_function(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Parameterless element-wise functions."""
    del graph
    return _result(node, OnnxFunction(node.operation_type))


class OnnxSelu(nn.Module, OnnxToTorchModule):
    """``gamma · (x if x > 0 else alpha · (exp(x) - 1))`` for any ``alpha``, ``gamma``."""

    def __init__(self, alpha: float, gamma: float) -> None:
        """Attributes as in ONNX (defaults are torch's SELU constants)."""
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SELU(x)."""
        return self.gamma * torch.where(x > 0, x, self.alpha * torch.expm1(x))


@converter("Selu", [6, 22], replaces=True)
def convert_selu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Selu-6/22; the stock converter refuses non-default ``alpha``/``gamma``."""
    del graph
    module = OnnxSelu(float(node.attributes.get("alpha", 1.67326319217681884765625)),
                      float(node.attributes.get("gamma", 1.05070102214813232421875)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
