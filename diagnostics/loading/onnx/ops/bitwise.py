"""Bit operations onnx2torch lacks: BitShift-11/28 and BitwiseAnd/Or/Xor/Not-18.

torch implements few kernels for uint16/32/64, so those tensors are reinterpreted as the signed
type of the same width (bit patterns are what these ops act on) or widened to int64 for shifts.
BitShift-28 defines what 11 left open: arithmetic right shift for signed types, and shifts that
are negative or at least the bit width give 0 (-1 for a right shift of a negative value).
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

from diagnostics.loading.onnx.ops.registry import converter

_SIGNED_VIEW = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
_UNSIGNED = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
_BITWISE = {"BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
            "BitwiseXor": torch.bitwise_xor}


def _bits(dtype: torch.dtype) -> int:
    return torch.iinfo(dtype).bits


def _as_signed(x: torch.Tensor) -> torch.Tensor:
    return x.view(_SIGNED_VIEW[x.dtype]) if x.dtype in _SIGNED_VIEW else x


class OnnxBitwise(nn.Module, OnnxToTorchModule):
    """Element-wise and/or/xor (two inputs) or not (one input) on integer or bool tensors."""

    def __init__(self, op_type: str) -> None:
        """The ONNX op type (``BitwiseAnd`` ... ``BitwiseNot``)."""
        super().__init__()
        self.op_type = op_type

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """The bitwise result in the inputs' dtype."""
        if self.op_type == "BitwiseNot":
            return torch.bitwise_not(_as_signed(a)).view(a.dtype)
        if b is None:
            raise ValueError(f"{self.op_type} takes two inputs")
        return _BITWISE[self.op_type](_as_signed(a), _as_signed(b)).view(a.dtype)


class OnnxBitShift(nn.Module, OnnxToTorchModule):
    """``x << y`` or ``x >> y`` element-wise, with BitShift-28's out-of-range rule."""

    def __init__(self, left: bool) -> None:
        """``left`` for direction LEFT."""
        super().__init__()
        self.left = left

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Shifted ``x`` in its dtype."""
        width = _bits(x.dtype)
        shift = y.to(torch.int64)
        outside = (shift < 0) | (shift >= width)
        shift = torch.where(outside, 0, shift)
        if x.dtype == torch.uint64:
            shifted = self._shift_uint64(x.view(torch.int64), shift).view(torch.uint64)
        else:
            wide = x.to(torch.int64)  # exact for every other type, unsigned included
            shifted = wide << shift if self.left else wide >> shift
            if x.dtype in _UNSIGNED:
                shifted = shifted & ((1 << width) - 1)
            shifted = shifted.to(x.dtype)  # int64 -> narrower wraps, dropping high bits
        fill = torch.zeros_like(shifted)
        if not self.left and x.dtype not in _UNSIGNED:
            fill = torch.where(x < 0, torch.full_like(shifted, -1), fill)
        return torch.where(outside, fill, shifted)

    def _shift_uint64(self, bits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if self.left:
            return bits << shift
        # Arithmetic shift of the signed view, then clear the copies of the sign bit.
        kept = (torch.ones_like(bits) << (64 - shift).clamp(max=63)) - 1
        return torch.where(shift == 0, bits, (bits >> shift) & kept)


@converter("BitShift", [11, 28])
def convert_bit_shift(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """BitShift-11/28."""
    del graph
    direction = node.attributes["direction"]
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return OperationConverterResult(torch_module=OnnxBitShift(direction.upper() == "LEFT"),
                                    onnx_mapping=onnx_mapping_from_node(node))


@converter("BitwiseAnd", [18])
@converter("BitwiseOr", [18])
@converter("BitwiseXor", [18])
@converter("BitwiseNot", [18])
def convert_bitwise(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """BitwiseAnd/Or/Xor/Not-18."""
    del graph
    return OperationConverterResult(torch_module=OnnxBitwise(node.operation_type),
                                    onnx_mapping=onnx_mapping_from_node(node))
