"""Matrix ops: Det-11/22 and Trilu-14, which onnx2torch lacks, and Gemm without wasted work.

* Det: the determinant of each square matrix in the last two dims.
* Trilu (``torch.triu``/``tril`` in causal masks): upper or lower triangle from diagonal ``k``.
* Gemm (replaces the stock converter): the same ``nn.Linear`` with the same values, built
  without torch's random initialization, which the stock converter runs and then overwrites with
  the initializer. On GPT-2 large (774M parameters, all in Gemm weights) that ``uniform_`` took up
  to 2.4 s of a 5–10 s load.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
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


# onnx2torch's own (one function serves Gemm 9, 11 and 13): ours falls back to it, and the
# benchmarks' floor converts with it, as onnx2torch ships.
STOCK_GEMM = get_converter("Gemm", 13)


@converter("Gemm", [9, 11, 13], replaces=True)
def convert_gemm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Gemm-9/11/13: the stock converter's ``nn.Linear`` (weights and bias from initializers,
    scaled by alpha and beta), allocated with ``skip_init``; any other Gemm is the stock one's."""
    a_name, b_name = node.input_values[0], node.input_values[1]
    c_name = node.input_values[2] if len(node.input_values) > 2 else None
    attributes = node.attributes
    alpha, beta = attributes.get("alpha", 1.0), attributes.get("beta", 1.0)
    trans_a = attributes.get("transA", 0) != 0
    trans_b = attributes.get("transB", 0) != 0
    linear = not trans_a and b_name in graph.initializers and (
        c_name is None or c_name in graph.initializers)
    bias = graph.initializers[c_name].to_torch() if linear and c_name is not None else None
    if not linear or (bias is not None and bias.dim() != 1):
        return STOCK_GEMM(node, graph)
    weights = graph.initializers[b_name].to_torch()
    if not trans_b:
        weights = weights.T
    module = nn.utils.skip_init(nn.Linear, weights.shape[1], weights.shape[0],
                                bias=bias is not None)
    with torch.no_grad():
        module.weight.data = weights * alpha
        if bias is not None:
            module.bias.data = bias * beta
    return OperationConverterResult(
        torch_module=module, onnx_mapping=OnnxMapping(inputs=(a_name,),
                                                      outputs=node.output_values))
