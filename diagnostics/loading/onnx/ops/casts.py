"""Cast at every opset and CastLike (15+), with every element type torch holds.

Stock Cast-9/13 is replaced (``replaces=True``): its type table lacks bfloat16 and the unsigned
16/32/64-bit types, so a model that casts to bfloat16 failed. Cast-19's ``saturate`` and
Cast-24's ``round_mode`` only affect float8/float4 targets, which torch cannot hold: a cast to
those types (or to strings) is refused at conversion, naming the type.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping, torch_dtype
from diagnostics.loading.onnx.ops.registry import converter

_NEWER = (19, 21, 23, 24, 25)


class OnnxCast(nn.Module, OnnxToTorchModule):
    """Cast to a fixed dtype (differentiable between float types, as in torch)."""

    def __init__(self, dtype: torch.dtype) -> None:
        """Cast to ``dtype``."""
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the target dtype; float to integer truncates toward zero."""
        return x.to(self.dtype)


class OnnxCastLike(nn.Module, OnnxToTorchModule):
    """Cast the first input to the dtype of the second."""

    def forward(self, x: torch.Tensor, target_type: torch.Tensor) -> torch.Tensor:
        """``x`` in ``target_type``'s dtype."""
        return x.to(target_type.dtype)


@converter("Cast", [6, 9, 13], replaces=True)
@converter("Cast", (*_NEWER, 28))
def convert_cast(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Cast to the ``to`` attribute's type."""
    del graph
    dtype = torch_dtype(int(node.attributes["to"]), "Cast")
    return OperationConverterResult(torch_module=OnnxCast(dtype),
                                    onnx_mapping=mapping(node, node.input_values[:1]))


@converter("CastLike", (15, *_NEWER))
def convert_cast_like(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """CastLike: the target's dtype is read in ``forward`` (its values are never used)."""
    del graph
    return OperationConverterResult(torch_module=OnnxCastLike(), onnx_mapping=mapping(node))
