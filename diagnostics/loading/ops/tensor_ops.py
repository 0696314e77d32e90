"""IsInf (replaced), Trilu and ScatterND (replaced): ops transformer graphs use around masks.

* IsInf-10: the stock converter ignored ``detect_negative``/``detect_positive``; replaced
  (``replaces=True``), and IsInf-20 (types only) added.
* Trilu-14 (``torch.triu``/``tril`` in causal masks) had no converter.
* ScatterND-11/13/16: the stock converter refused every ``reduction`` but ``none``; replaced,
  and ScatterND-18 (``max``/``min``) added. Updates go through ``index_put``/``scatter_reduce``
  on the flattened indexed dimensions, so gradients reach both ``data`` and ``updates``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.ops._common import constant_ints, input_at, mapping
from diagnostics.loading.ops.registry import converter


class OnnxIsInf(nn.Module, OnnxToTorchModule):
    """Which elements are +inf and/or -inf."""

    def __init__(self, negative: bool, positive: bool) -> None:
        """Detect -inf when ``negative``, +inf when ``positive``."""
        super().__init__()
        self.negative, self.positive = negative, positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A bool tensor of ``x``'s shape."""
        found = torch.zeros_like(x, dtype=torch.bool)
        if self.positive:
            found = found | torch.isposinf(x)
        if self.negative:
            found = found | torch.isneginf(x)
        return found


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
        flat = data.reshape(-1, *rest)
        values = updates.reshape(-1, *rest)
        if self.reduction in ("none", "add"):
            result = flat.index_put((flat_index,), values, accumulate=self.reduction == "add")
        else:
            expanded = flat_index.reshape(-1, *([1] * len(rest))).expand_as(values)
            result = flat.scatter_reduce(0, expanded, values, self._REDUCE[self.reduction])
        return result.reshape(data.shape)


@converter("IsInf", [10], replaces=True)
@converter("IsInf", [20])
def convert_isinf(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """IsInf with both detection flags."""
    del graph
    attributes = node.attributes
    module = OnnxIsInf(bool(attributes.get("detect_negative", 1)),
                       bool(attributes.get("detect_positive", 1)))
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, node.input_values[:1]))


@converter("Trilu", [14])
def convert_trilu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Trilu-14."""
    k_name = input_at(node, 1)
    k = constant_ints(k_name, graph)
    module = OnnxTrilu(bool(node.attributes.get("upper", 1)),
                       k[0] if k else (None if k_name else 0))
    inputs = node.input_values[:2] if k_name and k is None else node.input_values[:1]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))


@converter("ScatterND", [11, 13, 16], replaces=True)
@converter("ScatterND", [18])
def convert_scatter_nd(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ScatterND with every reduction."""
    del graph
    module = OnnxScatterND(str(node.attributes.get("reduction", "none")))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))
