"""Cumulative ops: CumSum-11/14 (a fix) and CumProd-26 (onnx2torch lacks it).

* CumSum-11/14 replaces the stock converter (``replaces=True``): it defaulted the ``reverse``
  attribute to 1, so every plain cumulative sum (GPT-2's position ids from the attention mask,
  for instance) came out reversed; it also promoted int32 to int64.
* CumProd-26: ``exclusive`` shifts the running product by one step (the first output is 1) and
  ``reverse`` runs it from the end.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import constant_ints, input_at, mapping, runtime_input
from diagnostics.loading.onnx.ops.registry import converter


class OnnxCumProd(nn.Module, OnnxToTorchModule):
    """Running product along the axis given as the second input."""

    def __init__(self, exclusive: bool, reverse: bool) -> None:
        """Attributes as in ONNX."""
        super().__init__()
        self.exclusive, self.reverse = exclusive, reverse

    def forward(self, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        """Same shape and dtype as ``x``."""
        dim = int(axis.reshape(-1)[0].item())
        if self.reverse:
            x = x.flip(dim)
        if self.exclusive:
            ones = torch.ones_like(x.narrow(dim, 0, 1))
            x = torch.cat([ones, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
        result = torch.cumprod(x, dim=dim, dtype=x.dtype)  # torch widens ints to int64
        return result.flip(dim) if self.reverse else result


@converter("CumProd", [26])
def convert_cum_prod(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """CumProd-26."""
    del graph
    attributes = node.attributes
    return OperationConverterResult(
        torch_module=OnnxCumProd(bool(attributes.get("exclusive", 0)),
                                 bool(attributes.get("reverse", 0))),
        onnx_mapping=onnx_mapping_from_node(node),
    )


class OnnxCumSum(nn.Module, OnnxToTorchModule):
    """Cumulative sum along an axis, optionally exclusive and/or reversed."""

    def __init__(self, axis: int | None, *, exclusive: bool, reverse: bool) -> None:
        """``axis`` fixed at conversion, or None to read it in ``forward``."""
        super().__init__()
        self.axis, self.exclusive, self.reverse = axis, exclusive, reverse

    def forward(self, x: torch.Tensor, axis: torch.Tensor | None = None) -> torch.Tensor:
        """The cumulative sum, in ``x``'s dtype."""
        dim = self.axis if self.axis is not None else int(
            runtime_input(axis, "CumSum", "axis").reshape(-1)[0])
        if self.reverse:
            x = torch.flip(x, dims=(dim,))
        result = torch.cumsum(x, dim=dim, dtype=x.dtype)
        if self.exclusive:  # shift by one step, starting from 0 (not `result - x`: exact)
            length = x.shape[dim]
            zero = torch.zeros_like(x.narrow(dim, 0, min(length, 1)))
            result = torch.cat([zero, result.narrow(dim, 0, max(length - 1, 0))], dim=dim)
        if self.reverse:
            result = torch.flip(result, dims=(dim,))
        return result


@converter("CumSum", [11, 14], replaces=True)
def convert_cumsum(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """CumSum with ONNX defaults (``exclusive=0``, ``reverse=0``)."""
    axis = constant_ints(input_at(node, 1), graph)
    module = OnnxCumSum(None if axis is None else axis[0],
                        exclusive=bool(node.attributes.get("exclusive", 0)),
                        reverse=bool(node.attributes.get("reverse", 0)))
    inputs = node.input_values[:1] if axis is not None else node.input_values[:2]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))
