"""Matrix ops: Det-11/22 and Trilu-14, which onnx2torch lacks.

* Det: the determinant of each square matrix in the last two dims.
* Trilu (``torch.triu``/``tril`` in causal masks): upper or lower triangle from diagonal ``k``.
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

from diagnostics.loading.onnx.ops._common import constant_ints, input_at, mapping
from diagnostics.loading.onnx.ops.registry import converter


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


class OnnxTrilu(nn.Module, OnnxToTorchModule):
    """Upper or lower triangle of the last two dimensions, from diagonal ``k``."""

    def __init__(self, upper: bool, k: int | None) -> None:
        """``k`` fixed at conversion, or None to read it in ``forward`` (default 0)."""
        super().__init__()
        self.upper, self.k = upper, k

    def forward(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """The masked tensor."""
        diagonal = self.k if self.k is not None else (0 if k is None else int(k))
        return torch.triu(x, diagonal) if self.upper else torch.tril(x, diagonal)


@converter("Trilu", [14])
def convert_trilu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Trilu-14."""
    k_name = input_at(node, 1)
    k = constant_ints(k_name, graph)
    module = OnnxTrilu(bool(node.attributes.get("upper", 1)),
                       k[0] if k else (None if k_name else 0))
    inputs = node.input_values[:2] if k_name and k is None else node.input_values[:1]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))
