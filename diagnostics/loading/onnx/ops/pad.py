"""Pad at every opset: 2/11/13 replaced, 18 (``axes``), 19 (``wrap``), 21/23/24/25 added.

The stock converters (2/11/13) route through ``F.pad``, whose reflect/replicate modes only pad
the last one to three dimensions of a batched input, and have no converter from opset 18 on
(the dynamo exporter's ``F.pad``). Here ``constant`` uses ``F.pad`` (any rank, negative pads
crop), and ``reflect``/``edge``/``wrap`` gather along each padded axis with the index map the
mode defines, which crops for negative pads too and whose gradient is the standard scatter-add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import (
    constant_ints,
    constant_tensor,
    input_at,
    mapping,
    runtime_input,
)
from diagnostics.loading.onnx.ops.registry import converter


def _source_index(length: int, before: int, after: int, mode: str) -> torch.Tensor:
    positions = torch.arange(-before, length + after)
    if mode == "edge":
        return positions.clamp(0, length - 1)
    if mode == "wrap":
        return positions.remainder(length)
    period = 2 * (length - 1)  # reflect: mirror about the first and last elements
    if period == 0:
        return torch.zeros_like(positions)
    folded = positions.remainder(period)
    return torch.where(folded < length, folded, period - folded)


class OnnxPad(nn.Module, OnnxToTorchModule):
    """Pad (or, with negative amounts, crop) the given axes."""

    def __init__(self, mode: str, pads: list[int] | None, axes: list[int] | None,
                 value: float | None) -> None:
        """Fixed ``pads``/``axes``/``value`` where the model makes them constant, else None."""
        super().__init__()
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise NotImplementedError(f"Pad mode={mode!r}")
        self.mode, self.pads, self.axes, self.value = mode, pads, axes, value

    def forward(self, data: torch.Tensor, pads: torch.Tensor | None = None,
                constant_value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        """The padded tensor."""
        amounts = self.pads if self.pads is not None else [
            int(v) for v in runtime_input(pads, "Pad", "pads").tolist()]
        chosen = self.axes if self.axes is not None else (
            None if axes is None else [int(v) for v in axes.tolist()])
        rank = data.dim()
        chosen = [a + rank if a < 0 else a for a in (chosen or range(rank))]
        count = len(chosen)
        per_axis = {axis: (amounts[i], amounts[count + i]) for i, axis in enumerate(chosen)}
        if self.mode == "constant":
            value = self.value
            if value is None:
                value = 0.0 if constant_value is None or constant_value.numel() == 0 \
                    else constant_value.reshape(-1)[0].item()
            flat = [p for axis in reversed(range(rank)) for p in per_axis.get(axis, (0, 0))]
            return F.pad(data, flat, mode="constant", value=value)
        for axis, (before, after) in per_axis.items():
            if before or after:
                index = _source_index(data.shape[axis], before, after, self.mode)
                data = data.index_select(axis, index.to(data.device))
        return data


def _constant_value(node: OnnxNode, graph: OnnxGraph) -> tuple[float | None, bool]:
    """(value, dynamic): the constant pad value when fixed, else (None, True)."""
    name = input_at(node, 2)
    if not name:
        return float(node.attributes.get("value", 0.0)), False
    tensor = constant_tensor(name, graph)
    if tensor is None:
        return None, True
    return (tensor.reshape(-1)[0].item() if tensor.numel() else 0.0), False


@converter("Pad", [2, 11, 13], replaces=True)
@converter("Pad", [1, 18, 19, 21, 23, 24, 25])
def convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Pad with constant inputs baked in, computed ones fed to ``forward``."""
    attributes = node.attributes
    pads_name, axes_name = input_at(node, 1), input_at(node, 3)
    pads = attributes.get("pads", attributes.get("paddings"))
    if pads is None:
        pads = constant_ints(pads_name, graph)
    axes = constant_ints(axes_name, graph) if axes_name else None
    value, dynamic_value = _constant_value(node, graph)
    module = OnnxPad(str(attributes.get("mode", "constant")), pads, axes, value)
    inputs = [node.input_values[0],
              pads_name if pads is None else "",
              input_at(node, 2) if dynamic_value else "",
              axes_name if axes_name and axes is None else ""]
    while inputs[-1] == "":
        inputs.pop()
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, tuple(inputs)))
