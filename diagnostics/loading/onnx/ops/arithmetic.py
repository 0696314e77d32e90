"""Element-wise arithmetic: fixes to stock converters found by the ONNX backend node tests.

* ``Pow`` (replaces the stock converter): ONNX gives the result the *base's* type
  (``Pow(int32, float32)`` is int32) where torch promotes to float; and torch's backward through
  ``pow`` fails for an unsigned exponent wider than 8 bits, so such exponents are widened first.
* ``Clip`` (replaces the stock converter for 11-13): the stock converter refuses ``min``/``max``
  that are not initializers or Constants; they are tensors at run time here. Constant bounds keep
  the stock modules (``nn.ReLU``/``nn.ReLU6``), which the probe recognises.
* ``IsInf-10``: the stock converter ignored ``detect_negative``/``detect_positive``; replaced,
  and IsInf-20 (types only) added.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    old_style_broadcast,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping
from diagnostics.loading.onnx.ops.registry import converter

# Unsigned types torch's pow backward cannot combine with a float base.
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


_STOCK_CLIP = get_converter("Clip", 13)


class OnnxPow(nn.Module, OnnxToTorchModule):
    """``base ** exponent`` in the base's dtype, with opset-1 ``broadcast``/``axis``."""

    def __init__(self, broadcast: int | None = None, axis: int | None = None) -> None:
        """Old-style broadcasting of the exponent when ``broadcast == 1`` (opset 1 only)."""
        super().__init__()
        self.broadcast, self.axis = broadcast, axis

    def forward(self, base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        """Element-wise power, cast back to ``base.dtype``."""
        if self.broadcast == 1 and self.axis is not None:
            exponent = old_style_broadcast(base, exponent, self.axis)
        if exponent.dtype in _WIDE_UNSIGNED:
            exponent = exponent.to(torch.int64)
        result = torch.pow(base, exponent)
        return result if result.dtype == base.dtype else result.to(base.dtype)


class OnnxClipTensor(nn.Module, OnnxToTorchModule):
    """``clamp(x, min, max)`` with bounds given as (scalar) tensors at run time."""

    def forward(self, x: torch.Tensor, min: torch.Tensor | None = None,
                max: torch.Tensor | None = None) -> torch.Tensor:  # ONNX input names
        """Clip ``x``; a missing bound does not clip. ``min > max`` gives ``max``, as in ONNX."""
        if min is None and max is None:
            return x
        return torch.clamp(x, min=min, max=max)


@converter("Pow", [1, 7, 12, 13, 15], replaces=True)
def convert_pow(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Pow-1..15."""
    del graph
    module = OnnxPow(node.attributes.get("broadcast"), node.attributes.get("axis"))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@converter("Clip", [11, 12, 13], replaces=True)
def convert_clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Clip-11..13: the stock modules for constant bounds, a tensor clamp otherwise."""
    try:
        return _STOCK_CLIP(node, graph)
    except NotImplementedError:  # the stock converter's refusal of run-time bounds
        return OperationConverterResult(torch_module=OnnxClipTensor(),
                                        onnx_mapping=onnx_mapping_from_node(node))


class OnnxIsInf(nn.Module, OnnxToTorchModule):
    """Which elements are +inf and/or -inf."""

    def __init__(self, negative: bool, positive: bool) -> None:
        """Detect -inf when ``negative``, +inf when ``positive``."""
        super().__init__()
        self.negative, self.positive = negative, positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A bool tensor of ``x``'s shape."""
        found = torch.zeros_like(x, dtype=torch.bool)
        if self.positive:
            found = found | torch.isposinf(x)
        if self.negative:
            found = found | torch.isneginf(x)
        return found


@converter("IsInf", [10], replaces=True)
@converter("IsInf", [20])
def convert_isinf(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """IsInf with both detection flags."""
    del graph
    attributes = node.attributes
    module = OnnxIsInf(bool(attributes.get("detect_negative", 1)),
                       bool(attributes.get("detect_positive", 1)))
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, node.input_values[:1]))
