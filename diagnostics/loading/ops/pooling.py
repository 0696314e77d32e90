"""AveragePool at every opset (7/10/11 replaced, 19/22 added) as a windowed sum over a count.

AveragePool-19 added ``dilations``, which ``F.avg_pool*d`` does not have, and onnx2torch's
stock converters (7/10/11) reject asymmetric padding beyond half the kernel. Here the sum of every
window is a depthwise convolution with a ones kernel (stride and dilation as given) over the
zero-padded input, and the divisor the same convolution over a mask: ones on the input, and on
the explicit padding too when ``count_include_pad``; never on the extra right-hand padding
``ceil_mode`` needs. That is exactly torch's ``avg_pool`` where it applies, so the gradient is the
one a torch model gets; ``auto_pad`` (SAME_UPPER/SAME_LOWER/VALID) sets the pads first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.ops._common import mapping
from diagnostics.loading.ops.registry import converter

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _layout(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int],
            auto_pad: str, ceil_mode: bool) -> tuple[int, int, int, int]:
    """(output length, pad before, pad after, extra ceil-mode padding after) of one axis."""
    span = dilation * (kernel - 1) + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        small, large = total // 2, total - total // 2
        before, after = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        return out, before, after, 0
    before, after = (0, 0) if auto_pad == "VALID" else pads
    length = (size + before + after - span) / stride + 1
    out = math.ceil(length) if ceil_mode else math.floor(length)
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1  # the last window must start inside the input or its left padding
    extra = max((out - 1) * stride + span - (size + before + after), 0)
    return out, before, after, extra


class OnnxAveragePool(nn.Module, OnnxToTorchModule):
    """N-d average pooling with ONNX's padding, dilation and counting rules."""

    def __init__(self, kernel: list[int], strides: list[int], dilations: list[int],
                 pads: list[int], *, auto_pad: str, ceil_mode: bool,
                 count_include_pad: bool) -> None:
        """Attributes as in ONNX (``pads`` as all begins then all ends)."""
        super().__init__()
        self.kernel, self.strides, self.dilations, self.pads = kernel, strides, dilations, pads
        self.auto_pad, self.ceil_mode = auto_pad, ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled tensor ``[N, C, out...]``."""
        dims = len(self.kernel)
        layouts = [
            _layout(x.shape[2 + i], self.kernel[i], self.strides[i], self.dilations[i],
                    (self.pads[i], self.pads[dims + i]), self.auto_pad, self.ceil_mode)
            for i in range(dims)
        ]
        torch_pads: list[int] = []
        for _, before, after, extra in reversed(layouts):  # F.pad lists the last axis first
            torch_pads += [before, after + extra]
        padded = F.pad(x, torch_pads)
        mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        if self.count_include_pad:
            mask = F.pad(mask, [p for _, b, a, _ in reversed(layouts) for p in (b, a)],
                         value=1.0)
            mask = F.pad(mask, [p for *_, e in reversed(layouts) for p in (0, e)])
        else:
            mask = F.pad(mask, torch_pads)
        conv = _CONV[dims]
        channels = x.shape[1]
        ones = torch.ones((channels, 1, *self.kernel), dtype=x.dtype, device=x.device)
        total = conv(padded, ones, stride=self.strides, dilation=self.dilations, groups=channels)
        count = conv(mask, ones[:1], stride=self.strides, dilation=self.dilations)
        return total / count


@converter("AveragePool", [7, 10, 11], replaces=True)
@converter("AveragePool", [1, 19, 22])
def convert_average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """AveragePool; ``dilations`` from opset 19, ``ceil_mode`` from 10."""
    del graph
    attributes = node.attributes
    kernel = list(attributes["kernel_shape"])
    dims = len(kernel)
    module = OnnxAveragePool(
        kernel,
        list(attributes.get("strides", [1] * dims)),
        list(attributes.get("dilations", [1] * dims)),
        list(attributes.get("pads", [0] * 2 * dims)),
        auto_pad=str(attributes.get("auto_pad", "NOTSET")),
        ceil_mode=bool(attributes.get("ceil_mode", 0)),
        count_include_pad=bool(attributes.get("count_include_pad", 0)),
    )
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, node.input_values[:1]))
