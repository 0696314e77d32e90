"""Conv and ConvTranspose where the stock converter cannot build an ``nn.ConvNd``.

The stock converter copies W and B out of initializers into an ``nn.Conv*`` module, so it fails
with a KeyError when the weight is computed in the graph (weight normalization, spectral norm,
a Cast or DequantizeLinear in front), refuses ``auto_pad`` SAME_* and asymmetric ConvTranspose
padding, and silently ignores ConvTranspose's ``output_shape``. This converter keeps the stock
module whenever the stock converter can build it correctly (the loader binds its weights), and
otherwise returns a functional module that takes W and B as inputs, so gradients flow to
whatever computed them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import CONV, CONV_TRANSPOSE
from diagnostics.loading.onnx.ops.registry import converter

_STOCK = get_converter("Conv", 11)  # the same function serves Conv and ConvTranspose 1/11


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _ConvAttributes(nn.Module, OnnxToTorchModule):
    """The attributes Conv and ConvTranspose share, and the pads they state explicitly."""

    def __init__(self, attributes: dict) -> None:
        """Node attributes as onnx2torch parses them."""
        super().__init__()
        self.strides = attributes.get("strides")
        self.dilations = attributes.get("dilations")
        self.group = int(attributes.get("group", 1))
        self.pads = attributes.get("pads")
        self.auto_pad = _text(attributes.get("auto_pad", "NOTSET"))

    def _stated_pads(self, rank: int) -> tuple[list[int], list[int]]:
        """Begin and end pads when auto_pad is not SAME_*: none for VALID or absent pads."""
        if self.auto_pad == "VALID" or not self.pads:
            return [0] * rank, [0] * rank
        return list(self.pads[:rank]), list(self.pads[rank:])


class OnnxConvFunctional(_ConvAttributes):
    """ONNX Conv with the weight and bias as inputs; any padding, auto_pad included."""

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, C, *spatial] -> [N, M, *out]``."""
        rank = w.dim() - 2
        if rank not in CONV:
            raise NotImplementedError(f"Conv over {rank} spatial dims")
        strides = self.strides or [1] * rank
        dilations = self.dilations or [1] * rank
        begin, end = self._pads(x.shape[2:], w.shape[2:], strides, dilations)
        x = F.pad(x, [amount for pair in reversed(list(zip(begin, end, strict=True)))
                      for amount in pair])
        return CONV[rank](x, w, b, stride=strides, dilation=dilations, groups=self.group)

    def _pads(self, sizes, kernel, strides, dilations) -> tuple[list[int], list[int]]:
        if self.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return self._stated_pads(len(kernel))
        begin, end = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if self.auto_pad == "SAME_UPPER" else large)
            end.append(large if self.auto_pad == "SAME_UPPER" else small)
        return begin, end


class OnnxConvTransposeFunctional(_ConvAttributes):
    """ONNX ConvTranspose with the weight and bias as inputs.

    Computes the full transposed convolution, appends ``output_padding``, then crops the pads
    ONNX asks for (given, derived from ``output_shape``, or from SAME_* auto_pad); a negative
    pad (``output_shape`` beyond the full result) extends it with zeros.
    """

    def __init__(self, attributes: dict) -> None:
        """Node attributes as onnx2torch parses them."""
        super().__init__(attributes)
        self.output_padding = attributes.get("output_padding")
        self.output_shape = attributes.get("output_shape")

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, C, *spatial] -> [N, M·group, *out]``."""
        rank = w.dim() - 2
        if rank not in CONV_TRANSPOSE:
            raise NotImplementedError(f"ConvTranspose over {rank} spatial dims")
        strides = self.strides or [1] * rank
        dilations = self.dilations or [1] * rank
        extra = self.output_padding or [0] * rank
        full = CONV_TRANSPOSE[rank](x, w, None, stride=strides, dilation=dilations,
                                     groups=self.group)
        full = F.pad(full, [amount for e in reversed(extra) for amount in (0, e)])
        begin, end = self._crop(x.shape[2:], full.shape[2:], strides)
        # Negative padding crops; an output_shape larger than the full result pads with zeros.
        out = F.pad(full, [-amount for pair in reversed(list(zip(begin, end, strict=True)))
                           for amount in pair])
        if b is not None:
            out = out + b.reshape(1, -1, *([1] * rank))
        return out

    def _crop(self, sizes, full_sizes, strides) -> tuple[list[int], list[int]]:
        rank = len(sizes)
        if self.output_shape is not None or self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            wanted = list(self.output_shape)[-rank:] if self.output_shape is not None else \
                [size * stride for size, stride in zip(sizes, strides, strict=True)]
            totals = [full - want for full, want in zip(full_sizes, wanted, strict=True)]
            if self.auto_pad == "SAME_UPPER":
                return [t // 2 for t in totals], [t - t // 2 for t in totals]
            return [t - t // 2 for t in totals], [t // 2 for t in totals]
        return self._stated_pads(rank)


@converter("Conv", [1, 11, 22], replaces=True)
@converter("ConvTranspose", [1, 11, 22], replaces=True)
def convert_conv(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Conv/ConvTranspose-1/11/22: the stock nn.ConvNd where it is right, else functional."""
    transpose = node.operation_type == "ConvTranspose"
    if not (transpose and node.attributes.get("output_shape") is not None):
        try:
            return _STOCK(node, graph)
        except (KeyError, NotImplementedError):  # computed W/B, or padding it cannot express
            pass
    module = OnnxConvTransposeFunctional(node.attributes) if transpose \
        else OnnxConvFunctional(node.attributes)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
