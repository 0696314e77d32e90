"""Reduce*-18 and later: the axes moved from an attribute to an optional second input.

onnx2torch 1.5.15 stops at opset 13 for every reduction but ReduceSum, so the dynamo exporter's
``ReduceMean(x, axes)`` (global pooling, LayerNorm decompositions) had no converter. Constant
axes are baked into the module; axes computed at run time are read in ``forward``.

Reductions over an empty set give the operation's identity (0 for sums, 1 for products, -inf
for max and log-sums, +inf for min), as the standard specifies, instead of torch's error.
"""

from __future__ import annotations

import math

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import constant_ints, input_at, mapping
from diagnostics.loading.onnx.ops.registry import converter

_EMPTY_SET_VALUE = {
    "ReduceL1": 0.0, "ReduceL2": 0.0, "ReduceSum": 0.0, "ReduceSumSquare": 0.0,
    "ReduceProd": 1.0, "ReduceMean": math.nan,
    "ReduceLogSum": -math.inf, "ReduceLogSumExp": -math.inf,
    "ReduceMax": -math.inf, "ReduceMin": math.inf,
}


def _empty_set_value(op_type: str, dtype: torch.dtype) -> float | int:
    value = _EMPTY_SET_VALUE[op_type]
    if dtype.is_floating_point or math.isfinite(value):
        return value
    info = torch.iinfo(dtype) if dtype != torch.bool else None
    if info is None:
        return 0
    return info.min if value < 0 else info.max


def _reduce(op_type: str, data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:  # noqa: C901
    if op_type == "ReduceSum":
        return torch.sum(data, dim=dims, keepdim=keepdim)
    if op_type == "ReduceMean":
        return torch.mean(data, dim=dims, keepdim=keepdim)
    if op_type == "ReduceMax":
        return torch.amax(data, dim=dims, keepdim=keepdim)
    if op_type == "ReduceMin":
        return torch.amin(data, dim=dims, keepdim=keepdim)
    if op_type == "ReduceProd":
        for dim in sorted(dims, reverse=True):  # torch.prod takes a single dim
            data = torch.prod(data, dim=dim, keepdim=keepdim)
        return data
    if op_type == "ReduceSumSquare":
        return torch.sum(data * data, dim=dims, keepdim=keepdim)
    if op_type == "ReduceL1":
        return torch.sum(torch.abs(data), dim=dims, keepdim=keepdim)
    if op_type == "ReduceL2":
        # vector_norm's backward is 0 (not NaN) at an all-zero slice
        return torch.linalg.vector_norm(data, ord=2, dim=dims, keepdim=keepdim)
    if op_type == "ReduceLogSum":
        return torch.log(torch.sum(data, dim=dims, keepdim=keepdim))
    if op_type == "ReduceLogSumExp":
        return torch.logsumexp(data, dim=dims, keepdim=keepdim)
    raise NotImplementedError(op_type)


class OnnxReduce(nn.Module, OnnxToTorchModule):
    """One ONNX reduction; ``axes`` fixed at conversion or given to ``forward``."""

    def __init__(self, op_type: str, axes: list[int] | None, *, keepdims: bool,
                 noop_with_empty_axes: bool) -> None:
        """Reduce over ``axes`` (None: read them in forward, or all when absent)."""
        super().__init__()
        self.op_type, self.axes = op_type, axes
        self.keepdims, self.noop_with_empty_axes = keepdims, noop_with_empty_axes

    def forward(self, data: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        """The reduction of ``data`` (same dtype) over the axes."""
        dims = self.axes if self.axes is not None else (
            [] if axes is None else [int(a) for a in axes.reshape(-1).tolist()])
        if not dims:
            if self.noop_with_empty_axes:
                return data
            dims = list(range(data.dim()))
        dims = sorted({d + data.dim() if d < 0 else d for d in dims})
        if data.dim() == 0:
            return self._reduce_dims(data.reshape(1), [0], keepdim=False)
        return self._reduce_dims(data, dims, keepdim=self.keepdims)

    def _reduce_dims(self, data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
        if any(data.shape[d] == 0 for d in dims):
            shape = [1 if d in dims else n for d, n in enumerate(data.shape)]
            if not keepdim:
                shape = [n for d, n in enumerate(data.shape) if d not in dims]
            return torch.full(shape, _empty_set_value(self.op_type, data.dtype), dtype=data.dtype,
                              device=data.device)
        exact = data.is_floating_point() or self.op_type in ("ReduceSum", "ReduceMax",
                                                              "ReduceMin", "ReduceProd")
        if data.dtype == torch.bool:
            return _reduce(self.op_type, data.to(torch.uint8), dims, keepdim).to(torch.bool)
        if exact:
            return _reduce(self.op_type, data, dims, keepdim)
        # integer L2 / mean / log-sums: compute in float64, return the input's type as ONNX does
        return _reduce(self.op_type, data.double(), dims, keepdim).to(data.dtype)


@converter("ReduceMean", [18])
@converter("ReduceL1", [18])
@converter("ReduceL2", [18])
@converter("ReduceLogSum", [18, 28])
@converter("ReduceLogSumExp", [18, 28])
@converter("ReduceMax", [18, 20])
@converter("ReduceMin", [18, 20])
@converter("ReduceProd", [18])
@converter("ReduceSumSquare", [18])
def convert_reduce(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """A reduction whose axes are an optional input (opset 18+)."""
    axes_name = input_at(node, 1)
    axes = constant_ints(axes_name, graph)
    module = OnnxReduce(
        node.operation_type, axes if axes_name else [],
        keepdims=bool(node.attributes.get("keepdims", 1)),
        noop_with_empty_axes=bool(node.attributes.get("noop_with_empty_axes", 0)),
    )
    inputs = node.input_values[:1] if axes is not None or not axes_name else node.input_values
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, tuple(inputs)))
