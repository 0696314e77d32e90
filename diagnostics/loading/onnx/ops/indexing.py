"""Indexing ops: Gather/Scatter families, OneHot, Compress, ReverseSequence, Hardmax, TopK, NonZero.

onnx2torch 1.5.15 has no ScatterElements, OneHot, Compress, ReverseSequence or Hardmax. Stock
converters replaced (``replaces=True``) because they give wrong results or refuse valid nodes:

* GatherElements passed negative indices to ``torch.gather``, which rejects them (ONNX counts
  them from the end). TopK is a fix too.
* NonZero-13 returned ``torch.nonzero``'s ``[count, rank]`` layout; the standard's output is
  ``[rank, count]``. NonZero-9 (same semantics) was missing.
* ScatterND-11/13/16 refused every ``reduction`` but ``none``; ScatterND-18 (``max``/``min``) is
  added. Updates go through ``index_put``/``scatter_reduce`` on the flattened indexed
  dimensions, so gradients reach both ``data`` and ``updates``.

Every module differentiates with respect to its data input through
``torch.gather``/``scatter``/``index_select``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping, runtime_input
from diagnostics.loading.onnx.ops.registry import converter

# ONNX ScatterElements reduction -> torch.scatter_reduce's name for it.
_REDUCTIONS = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(indices: torch.Tensor, size: int) -> torch.Tensor:
    """int64 indices with negative ones counted from the end, as ONNX defines them."""
    indices = indices.to(torch.int64)
    return torch.where(indices < 0, indices + size, indices)


class OnnxGatherElements(nn.Module, OnnxToTorchModule):
    """``torch.gather`` along ``axis`` with ONNX's negative indices."""

    def __init__(self, axis: int) -> None:
        """Gather along ``axis`` (negative counts from the end)."""
        super().__init__()
        self.axis = axis

    def forward(self, data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``out[i][j] = data[indices[i][j]][j]`` for axis 0, and so on."""
        return torch.gather(data, self.axis, _wrap(indices, data.shape[self.axis]))


class OnnxScatterElements(nn.Module, OnnxToTorchModule):
    """ScatterElements with reduction none / add / mul / max / min."""

    def __init__(self, axis: int, reduction: str) -> None:
        """Scatter along ``axis``; ``reduction`` as the ONNX attribute."""
        super().__init__()
        if reduction != "none" and reduction not in _REDUCTIONS:
            raise NotImplementedError(f"ScatterElements reduction={reduction!r}")
        self.axis, self.reduction = axis, reduction

    def forward(self, data: torch.Tensor, indices: torch.Tensor,
                updates: torch.Tensor) -> torch.Tensor:
        """A copy of ``data`` with ``updates`` written (or reduced) at ``indices``."""
        indices = _wrap(indices, data.shape[self.axis])
        if self.reduction == "none":
            return torch.scatter(data, self.axis, indices, updates)
        return torch.scatter_reduce(data, self.axis, indices, updates,
                                    reduce=_REDUCTIONS[self.reduction], include_self=True)


class OnnxOneHot(nn.Module, OnnxToTorchModule):
    """One-hot encoding with ``values = [off, on]``; out-of-range indices are all ``off``."""

    def __init__(self, axis: int) -> None:
        """Insert the depth axis at ``axis`` of the output."""
        super().__init__()
        self.axis = axis

    def forward(self, indices: torch.Tensor, depth: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        """Output of rank ``indices.dim() + 1`` in ``values``' dtype."""
        size = int(depth.reshape(-1)[0].item())
        wrapped = _wrap(indices, size)  # float indices truncate, as the ONNX reference does
        valid = (wrapped >= 0) & (wrapped < size)
        hot = F.one_hot(torch.where(valid, wrapped, 0), size).bool() & valid.unsqueeze(-1)
        axis = self.axis if self.axis >= 0 else self.axis + indices.dim() + 1
        hot = hot.movedim(-1, axis)
        return torch.where(hot, values[1], values[0])


class OnnxCompress(nn.Module, OnnxToTorchModule):
    """Select slices where ``condition`` is true, along ``axis`` or of the flattened input."""

    def __init__(self, axis: int | None) -> None:
        """``axis`` None flattens the input first."""
        super().__init__()
        self.axis = axis

    def forward(self, data: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The selected slices; a condition shorter than the axis selects from its start."""
        axis = 0 if self.axis is None else self.axis
        if self.axis is None:
            data = data.reshape(-1)
        count = min(condition.numel(), data.shape[axis])
        chosen = torch.nonzero(condition.reshape(-1)[:count].bool()).reshape(-1)
        return torch.index_select(data, axis, chosen)


class OnnxReverseSequence(nn.Module, OnnxToTorchModule):
    """Reverse the first ``sequence_lens[b]`` steps along the time axis of each batch entry."""

    def __init__(self, time_axis: int, batch_axis: int) -> None:
        """Axes as in the ONNX attributes (0/1 or 1/0)."""
        super().__init__()
        self.time_axis, self.batch_axis = time_axis, batch_axis

    def forward(self, data: torch.Tensor, sequence_lens: torch.Tensor) -> torch.Tensor:
        """``data`` with each sequence's valid prefix reversed."""
        steps = data.shape[self.time_axis]
        time = torch.arange(steps, device=data.device).unsqueeze(1)  # [T, 1]
        lengths = sequence_lens.to(torch.int64).unsqueeze(0)  # [1, B]
        source = torch.where(time < lengths, lengths - 1 - time, time)  # [T, B]
        if self.time_axis > self.batch_axis:
            source = source.T
        shape = [1] * data.dim()
        shape[self.time_axis], shape[self.batch_axis] = steps, data.shape[self.batch_axis]
        return torch.gather(data, self.time_axis, source.reshape(shape).expand(data.shape))


def _result(node: OnnxNode, module: nn.Module) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@converter("GatherElements", [11, 13], replaces=True)
def convert_gather_elements(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GatherElements-11/13."""
    del graph
    return _result(node, OnnxGatherElements(node.attributes.get("axis", 0)))


@converter("ScatterElements", [11, 13, 16, 18])
def convert_scatter_elements(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ScatterElements-11..18 (``reduction`` from 16, max/min from 18)."""
    del graph
    attributes = node.attributes
    return _result(node, OnnxScatterElements(attributes.get("axis", 0),
                                             attributes.get("reduction", "none")))


@converter("OneHot", [9, 11, 28])
def convert_one_hot(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """OneHot-9/11/28 (11 adds negative indices, 28 only types)."""
    del graph
    return _result(node, OnnxOneHot(node.attributes.get("axis", -1)))


@converter("Compress", [9, 11, 28])
def convert_compress(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Compress-9/11/28."""
    del graph
    return _result(node, OnnxCompress(node.attributes.get("axis")))


@converter("ReverseSequence", [10, 28])
def convert_reverse_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ReverseSequence-10/28."""
    del graph
    attributes = node.attributes
    return _result(node, OnnxReverseSequence(attributes.get("time_axis", 0),
                                             attributes.get("batch_axis", 1)))


class OnnxHardmax(nn.Module, OnnxToTorchModule):
    """1 at the first maximum, 0 elsewhere, along ``axis`` (13) or of the 2-D coercion (1/11)."""

    def __init__(self, axis: int, coerce_2d: bool) -> None:
        """Opsets 1 and 11 flatten the input to ``[prod(:axis), prod(axis:)]`` first."""
        super().__init__()
        self.axis, self.coerce_2d = axis, coerce_2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape and dtype as ``x``."""
        axis = self.axis if self.axis >= 0 else self.axis + x.dim()
        values = x.reshape(*x.shape[:axis], -1) if self.coerce_2d else x
        hot = F.one_hot(values.argmax(dim=axis), values.shape[axis]).movedim(-1, axis)
        return hot.to(x.dtype).reshape(x.shape)


@converter("Hardmax", [1, 11])
def convert_hardmax_2d(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Hardmax-1/11: over the input coerced to 2-D at ``axis`` (default 1)."""
    del graph
    return _result(node, OnnxHardmax(node.attributes.get("axis", 1), coerce_2d=True))


@converter("Hardmax", [13])
def convert_hardmax(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Hardmax-13: along ``axis`` (default -1)."""
    del graph
    return _result(node, OnnxHardmax(node.attributes.get("axis", -1), coerce_2d=False))


class OnnxTopK(nn.Module, OnnxToTorchModule):
    """The ``k`` largest (or smallest) values and their indices; ties keep the lower index.

    Replaces the stock ``torch.topk`` module, whose order among equal values is unspecified
    while ONNX requires the lower index first: a stable sort gives that.
    """

    def __init__(self, axis: int, largest: bool, k: int | None) -> None:
        """``k`` from the attribute (opset 1) or None to read the input (10+)."""
        super().__init__()
        self.axis, self.largest, self.k = axis, largest, k

    def forward(self, x: torch.Tensor, k: torch.Tensor | None = None):
        """``(values, indices)``, each with ``k`` entries along ``axis``."""
        count = self.k if self.k is not None else int(
            runtime_input(k, "TopK", "K").reshape(-1)[0].item())
        values, indices = torch.sort(x, dim=self.axis, descending=self.largest, stable=True)
        return values.narrow(self.axis, 0, count), indices.narrow(self.axis, 0, count)


@converter("TopK", [1, 10, 11, 24], replaces=True)
def convert_top_k(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """TopK-1/10/11/24 (``k`` an attribute in 1, an input from 10; 11 adds ``largest``)."""
    del graph
    attributes = node.attributes
    fixed_k = attributes.get("k") if len(node.input_values) < 2 else None
    return _result(node, OnnxTopK(attributes.get("axis", -1),
                                  bool(attributes.get("largest", 1)), fixed_k))


class OnnxNonZero(nn.Module, OnnxToTorchModule):
    """Indices of the non-zero elements, ``[rank, count]`` as the standard lays them out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``int64 [rank, count]`` indices in row-major order."""
        return torch.nonzero(x).transpose(0, 1).contiguous()


@converter("NonZero", [9, 13], replaces=True)
def convert_nonzero(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """NonZero."""
    del graph
    return OperationConverterResult(torch_module=OnnxNonZero(),
                                    onnx_mapping=mapping(node, node.input_values[:1]))


class OnnxScatterND(nn.Module, OnnxToTorchModule):
    """``data`` with slices at ``indices`` replaced by (or reduced with) ``updates``."""

    _REDUCE: ClassVar[dict[str, str]] = {"mul": "prod", "max": "amax", "min": "amin"}

    def __init__(self, reduction: str) -> None:
        """``reduction`` is none, add, mul, max or min."""
        super().__init__()
        if reduction not in ("none", "add", *self._REDUCE):
            raise NotImplementedError(f"ScatterND reduction={reduction!r}")
        self.reduction = reduction

    def forward(self, data: torch.Tensor, indices: torch.Tensor,
                updates: torch.Tensor) -> torch.Tensor:
        """The updated copy of ``data``."""
        depth = indices.shape[-1]
        leading = data.shape[:depth]
        rest = data.shape[depth:]
        index = indices.reshape(-1, depth).to(torch.int64)
        sizes = torch.tensor(leading, dtype=torch.int64, device=index.device)
        index = torch.where(index < 0, index + sizes, index)
        strides = [1] * depth
        for i in range(depth - 2, -1, -1):
            strides[i] = strides[i + 1] * int(leading[i + 1])
        flat_index = (index * torch.tensor(strides, device=index.device)).sum(-1)
        # Explicit row counts: with an empty slice in ``rest`` (Swin3D's shifted-window mask
        # at a small clip) a -1 would be ambiguous.
        flat = data.reshape(math.prod(leading), *rest)
        values = updates.reshape(flat_index.shape[0], *rest)
        if self.reduction in ("none", "add"):
            result = flat.index_put((flat_index,), values, accumulate=self.reduction == "add")
        else:
            expanded = flat_index.reshape(-1, *([1] * len(rest))).expand_as(values)
            result = flat.scatter_reduce(0, expanded, values, self._REDUCE[self.reduction])
        return result.reshape(data.shape)


@converter("ScatterND", [11, 13, 16], replaces=True)
@converter("ScatterND", [18])
def convert_scatter_nd(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ScatterND with every reduction."""
    del graph
    module = OnnxScatterND(str(node.attributes.get("reduction", "none")))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))
