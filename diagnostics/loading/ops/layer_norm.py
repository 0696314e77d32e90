"""LayerNormalization-17, replacing the stock converter.

Stock LayerNormalization-17 is replaced (``replaces=True``): it built ``nn.LayerNorm`` with the
normalized shape read from the *declared* input shape, so a dynamic dimension (declared 0) or a
missing value_info gave the wrong shape or a crash; it ignored the optional Mean/InvStdDev
outputs (a node listing them had its first output indexed instead), ``stash_type`` and a
broadcastable Scale; and it baked copies of Scale/B into the module. Here the normalized shape
comes from the runtime input and Scale/B are ``forward`` inputs, so the loader binds them to the
initializers the file names. With Scale of the normalized shape the math is ``F.layer_norm``,
the gradient a torch LayerNorm gets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.ops._common import mapping, normalize_axis
from diagnostics.loading.ops.registry import converter


def _stash(x: torch.Tensor, stash_type: int) -> torch.Tensor:
    # stash_type 1 (the default) asks for float32 statistics; only narrower floats change
    if stash_type == 1 and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


class OnnxLayerNorm(nn.Module, OnnxToTorchModule):
    """LayerNormalization over dimensions ``axis..rank-1`` with Y, Mean and InvStdDev."""

    def __init__(self, axis: int, epsilon: float, stash_type: int, outputs: int) -> None:
        """Normalize from ``axis``; ``outputs`` is how many of Y, Mean, InvStdDev are listed."""
        super().__init__()
        self.axis, self.epsilon, self.stash_type, self.outputs = axis, epsilon, stash_type, outputs

    def forward(self, x: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Y (and the statistics, shaped ``x.shape[:axis] + [1, ...]``)."""
        axis = normalize_axis(self.axis, x.dim())
        shape = tuple(x.shape[axis:])
        work = _stash(x, self.stash_type)
        if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            y = F.layer_norm(work, shape, scale.to(work.dtype),
                             None if bias is None else bias.to(work.dtype), self.epsilon)
        else:  # a Scale/B that only broadcasts to the normalized shape
            y = F.layer_norm(work, shape, None, None, self.epsilon) * scale
            y = y if bias is None else y + bias
        y = y.to(x.dtype)
        if self.outputs == 1:
            return y
        dims = tuple(range(axis, x.dim()))
        mean = work.mean(dim=dims, keepdim=True)
        variance = work.var(dim=dims, unbiased=False, keepdim=True)
        return (y, mean, torch.rsqrt(variance + self.epsilon))[: self.outputs]


def _result(node: OnnxNode, module: nn.Module) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))


@converter("LayerNormalization", [17], replaces=True)
def convert_layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """LayerNormalization-17."""
    del graph
    attributes = node.attributes
    return _result(node, OnnxLayerNorm(attributes.get("axis", -1),
                                       float(attributes.get("epsilon", 1e-5)),
                                       int(attributes.get("stash_type", 1)),
                                       len(node.output_values)))
