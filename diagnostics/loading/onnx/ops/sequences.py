"""Sequence ops (opset 11+): a sequence is a Python list of tensors passed between modules.

The dynamo exporter without its optimizer turns ``torch.split`` into
``SplitToSequence`` + ``SequenceAt`` (GPT-2's fused QKV projection), and loops over tensor lists
produce the others. Lists travel through the fx graph like any value; gradients flow through
the tensors they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import input_at, mapping, torch_dtype
from diagnostics.loading.onnx.ops.registry import converter


def _position(sequence: list, position: torch.Tensor | None, *, insert: bool = False) -> int:
    if position is None:
        return len(sequence) if insert else len(sequence) - 1
    index = int(position)
    return index + len(sequence) if index < 0 else index


class OnnxSplitToSequence(nn.Module, OnnxToTorchModule):
    """Split a tensor into a list along ``axis`` (by sizes, or in pieces of 1)."""

    def __init__(self, axis: int, keepdims: bool) -> None:
        """Split along ``axis``; ``keepdims`` keeps the axis when there are no sizes."""
        super().__init__()
        self.axis, self.keepdims = axis, keepdims

    def forward(self, data: torch.Tensor, split: torch.Tensor | None = None) -> list:
        """The pieces as a list."""
        if split is None:
            pieces = list(torch.split(data, 1, dim=self.axis))
            return pieces if self.keepdims else [p.squeeze(self.axis) for p in pieces]
        if split.dim() == 0:  # one size: equal chunks, the last may be smaller
            return list(torch.split(data, int(split), dim=self.axis))
        return list(torch.split(data, [int(v) for v in split.tolist()], dim=self.axis))


class OnnxSequenceOp(nn.Module, OnnxToTorchModule):
    """SequenceAt, SequenceLength, SequenceConstruct, SequenceInsert, SequenceErase."""

    def __init__(self, op_type: str) -> None:
        """The sequence operation named ``op_type``."""
        super().__init__()
        self.op_type = op_type

    def forward(self, *args: object) -> object:
        """Apply the operation; sequences are never modified in place."""
        if self.op_type == "SequenceConstruct":
            return list(args)
        # The other ops' ONNX schemas: a sequence of tensors, then tensors.
        first, *rest = args
        sequence = list(cast("Sequence[torch.Tensor]", first))
        tensors = cast("list[torch.Tensor]", rest)
        if self.op_type == "SequenceAt":
            return sequence[_position(sequence, tensors[0])]
        if self.op_type == "SequenceLength":
            return torch.tensor(len(sequence), dtype=torch.int64)
        if self.op_type == "SequenceInsert":
            position = tensors[1] if len(tensors) > 1 else None
            sequence.insert(_position(sequence, position, insert=True), tensors[0])
            return sequence
        del sequence[_position(sequence, tensors[0] if tensors else None)]  # SequenceErase
        return sequence


class OnnxSequenceEmpty(nn.Module, OnnxToTorchModule):
    """An empty sequence."""

    def forward(self) -> list:
        """``[]``."""
        return []


class OnnxConcatFromSequence(nn.Module, OnnxToTorchModule):
    """Concatenate (or, with ``new_axis``, stack) a sequence's tensors along ``axis``."""

    def __init__(self, axis: int, new_axis: bool) -> None:
        """Join along ``axis``."""
        super().__init__()
        self.axis, self.new_axis = axis, new_axis

    def forward(self, sequence: list) -> torch.Tensor:
        """The joined tensor."""
        join = torch.stack if self.new_axis else torch.cat
        return join(list(sequence), dim=self.axis)


@converter("SplitToSequence", [11, 24])
def convert_split_to_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """SplitToSequence."""
    del graph
    attributes = node.attributes
    module = OnnxSplitToSequence(attributes.get("axis", 0), bool(attributes.get("keepdims", 1)))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))


@converter("SequenceAt", [11])
@converter("SequenceLength", [11])
@converter("SequenceConstruct", [11])
@converter("SequenceInsert", [11])
@converter("SequenceErase", [11])
def convert_sequence_op(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Sequence access and edits."""
    del graph
    inputs = tuple(name for name in node.input_values if name)  # optional positions trail
    return OperationConverterResult(torch_module=OnnxSequenceOp(node.operation_type),
                                    onnx_mapping=mapping(node, inputs))


@converter("SequenceEmpty", [11])
def convert_sequence_empty(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """SequenceEmpty (its ``dtype`` only matters for an empty result, which torch ignores)."""
    del graph
    if "dtype" in node.attributes:
        torch_dtype(int(node.attributes["dtype"]), "SequenceEmpty")
    return OperationConverterResult(torch_module=OnnxSequenceEmpty(), onnx_mapping=mapping(node))


@converter("ConcatFromSequence", [11])
def convert_concat_from_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ConcatFromSequence."""
    del graph
    attributes = node.attributes
    module = OnnxConcatFromSequence(attributes["axis"], bool(attributes.get("new_axis", 0)))
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, (input_at(node, 0),)))
