"""Replacements for stock onnx2torch 1.5.15 converters that give wrong results silently.

* CumSum-11/14: the stock converter defaults the ``reverse`` attribute to 1, so every plain
  cumulative sum (GPT-2's position ids from the attention mask, for instance) came out reversed;
  it also promoted int32 to int64.
* NonZero-13: returned ``torch.nonzero``'s ``[count, rank]`` layout; the standard's output is
  ``[rank, count]``. NonZero-9 (same semantics) was missing.

Each is registered with ``replaces=True`` in onnx2torch's registry.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.ops._common import constant_ints, input_at, mapping
from diagnostics.loading.ops.registry import converter


class OnnxCumSum(nn.Module, OnnxToTorchModule):
    """Cumulative sum along an axis, optionally exclusive and/or reversed."""

    def __init__(self, axis: int | None, *, exclusive: bool, reverse: bool) -> None:
        """``axis`` fixed at conversion, or None to read it in ``forward``."""
        super().__init__()
        self.axis, self.exclusive, self.reverse = axis, exclusive, reverse

    def forward(self, x: torch.Tensor, axis: torch.Tensor | None = None) -> torch.Tensor:
        """The cumulative sum, in ``x``'s dtype."""
        dim = self.axis if self.axis is not None else int(axis.reshape(-1)[0])
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


class OnnxNonZero(nn.Module, OnnxToTorchModule):
    """Indices of the non-zero elements, ``[rank, count]`` as the standard lays them out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``int64 [rank, count]`` indices in row-major order."""
        return torch.nonzero(x).transpose(0, 1).contiguous()


@converter("CumSum", [11, 14], replaces=True)
def convert_cumsum(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """CumSum with ONNX defaults (``exclusive=0``, ``reverse=0``)."""
    axis = constant_ints(input_at(node, 1), graph)
    module = OnnxCumSum(None if axis is None else axis[0],
                        exclusive=bool(node.attributes.get("exclusive", 0)),
                        reverse=bool(node.attributes.get("reverse", 0)))
    inputs = node.input_values[:1] if axis is not None else node.input_values[:2]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))


@converter("NonZero", [9, 13], replaces=True)
def convert_nonzero(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """NonZero."""
    del graph
    return OperationConverterResult(torch_module=OnnxNonZero(),
                                    onnx_mapping=mapping(node, node.input_values[:1]))
