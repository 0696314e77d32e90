"""Det-11/22 (onnx2torch lacks it): the determinant of each square matrix in the last two dims."""

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


class OnnxDet(nn.Module, OnnxToTorchModule):
    """``torch.linalg.det``: ``[..., M, M] -> [...]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Determinants, batched over the leading dims."""
        return torch.linalg.det(x)


@converter("Det", [11, 22])
def convert_det(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Det-11/22."""
    del graph
    return OperationConverterResult(torch_module=OnnxDet(),
                                    onnx_mapping=onnx_mapping_from_node(node))
