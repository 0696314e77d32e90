"""CumProd-26, which onnx2torch lacks (CumSum has its own converter elsewhere).

``exclusive`` shifts the running product by one step (the first output is 1) and ``reverse``
runs it from the end; ``torch.cumprod`` differentiates correctly through zeros.
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

from diagnostics.loading.ops.registry import converter


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
