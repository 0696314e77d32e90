"""Pooling: AveragePool (every opset), MaxPool (a fix), GlobalMaxPool and LpPool.

* AveragePool at every opset (7/10/11 replaced, 19/22 added) as a windowed sum over a count.
  AveragePool-19 added ``dilations``, which ``F.avg_pool*d`` does not have, and onnx2torch's
  stock converters (7/10/11) reject asymmetric padding beyond half the kernel. Here the sum of
  every window is a depthwise convolution with a ones kernel (stride and dilation as given) over
  the zero-padded input, and the divisor the same convolution over a mask: ones on the input, and
  on the explicit padding too when ``count_include_pad``; never on the extra right-hand padding
  ``ceil_mode`` needs. That is exactly torch's ``avg_pool`` where it applies, so the gradient is
  the one a torch model gets; ``auto_pad`` (SAME_UPPER/SAME_LOWER/VALID) sets the pads first.
* MaxPool replaces the stock converter, which has no Indices output and fails on pads over half
  the kernel.
* GlobalMaxPool-1/22 and LpPool-11/18/22 (onnx2torch lacks them). LpPool is ``(sum over the
  window of |x|^p)^(1/p)``: computed as a convolution of ``|x|^p`` with a kernel of ones, which
  gives strides, dilations (18) and any padding for 1-3 spatial dims in one call; zero padding is
  exact because padded elements add ``0^p = 0``.
"""

from __future__ import annotations

import math

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

from diagnostics.loading.onnx.ops._common import CONV, mapping
from diagnostics.loading.onnx.ops.registry import converter


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
        # A single window wider than the padded axis (transformers' EfficientNet pools a 2x2 map
        # with a 2560-wide kernel and ceil_mode) covers the whole axis: shrink it to the axis
        # instead of padding the input out to the kernel (2·2560³ floats there). The part
        # beyond the axis adds nothing to the sum and is not counted in either mode.
        kernel = list(self.kernel)
        for i, (out, before, after, extra) in enumerate(layouts):
            if out == 1 and extra and self.dilations[i] == 1:
                kernel[i] = x.shape[2 + i] + before + after
                layouts[i] = (out, before, after, 0)
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
        conv = CONV[dims]
        channels = x.shape[1]
        ones = torch.ones((channels, 1, *kernel), dtype=x.dtype, device=x.device)
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


class OnnxGlobalMaxPool(nn.Module, OnnxToTorchModule):
    """Maximum over all spatial dims, kept as size-1 dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, 1, ...]``."""
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


class OnnxLpPool(nn.Module, OnnxToTorchModule):
    """Lp pooling over ``kernel_shape`` windows."""

    def __init__(self, kernel: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...], pads: tuple[int, ...] | None, auto_pad: str,
                 ceil_mode: bool, p: int) -> None:
        """Attributes as in ONNX; ``pads`` are ``[begin..., end...]``."""
        super().__init__()
        if len(kernel) not in CONV:
            raise NotImplementedError(f"LpPool over {len(kernel)} spatial dims")
        if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise NotImplementedError(f"LpPool auto_pad={auto_pad!r}")
        self.kernel, self.strides, self.dilations = kernel, strides, dilations
        self.pads, self.auto_pad, self.ceil_mode, self.p = pads, auto_pad, ceil_mode, p

    def _padding(self, sizes: tuple[int, ...]) -> list[tuple[int, int]]:
        rank = len(self.kernel)
        spans = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True)]
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            result = []
            for size, stride, span in zip(sizes, self.strides, spans, strict=True):
                total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
                small, large = total // 2, total - total // 2
                result.append((small, large) if self.auto_pad == "SAME_UPPER" else (large, small))
            return result
        pads = self.pads if self.pads and self.auto_pad == "NOTSET" else (0,) * (2 * rank)
        result = list(zip(pads[:rank], pads[rank:], strict=True))
        if self.ceil_mode:
            for axis, (size, stride, span) in enumerate(zip(sizes, self.strides, spans,
                                                             strict=True)):
                begin, end = result[axis]
                padded = size + begin + end
                windows = math.ceil((padded - span) / stride) + 1
                result[axis] = (begin, end + max((windows - 1) * stride + span - padded, 0))
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, out...]``."""
        batch, channels, *sizes = x.shape
        padding = self._padding(tuple(sizes))
        flat = [amount for pair in reversed(padding) for amount in pair]  # F.pad: last dim first
        powered = F.pad(x.abs().pow(self.p), flat)
        powered = powered.reshape(batch * channels, 1, *powered.shape[2:])
        ones = torch.ones((1, 1, *self.kernel), dtype=x.dtype, device=x.device)
        summed = CONV[len(self.kernel)](powered, ones, stride=self.strides,
                                                 dilation=self.dilations)
        return summed.pow(1.0 / self.p).reshape(batch, channels, *summed.shape[2:])


@converter("GlobalMaxPool", [1, 22])
def convert_global_max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GlobalMaxPool-1/22."""
    del graph
    return OperationConverterResult(torch_module=OnnxGlobalMaxPool(),
                                    onnx_mapping=onnx_mapping_from_node(node))


def _window(attributes: dict) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...],
                                       tuple[int, ...] | None, str, bool]:
    """Kernel, strides, dilations, pads (None: not given), auto_pad and ceil_mode of a pool."""
    kernel = tuple(attributes["kernel_shape"])
    ones = (1,) * len(kernel)
    auto_pad = attributes.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pads = attributes.get("pads")
    return (kernel, tuple(attributes.get("strides", ones)),
            tuple(attributes.get("dilations", ones)), tuple(pads) if pads is not None else None,
            auto_pad, bool(attributes.get("ceil_mode", 0)))


@converter("LpPool", [11, 18, 22])
def convert_lp_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """LpPool-11 and -18/22 (dilations, ceil_mode)."""
    del graph
    module = OnnxLpPool(*_window(node.attributes), int(node.attributes.get("p", 2)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class OnnxMaxPool(nn.Module, OnnxToTorchModule):
    """MaxPool with ONNX padding semantics and the optional Indices output.

    Pads with -inf explicitly (torch caps implicit padding at half the kernel) and sizes the
    output by ONNX's rule, so ``ceil_mode`` never adds a window that starts in the right padding.
    Indices index the unpadded input flattened over N, C and space (row-major, or column-major
    over the spatial dims for ``storage_order=1``).
    """

    def __init__(self, kernel: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...], pads: tuple[int, ...] | None, auto_pad: str,
                 ceil_mode: bool, column_major: bool, indices: bool) -> None:
        """Attributes as in ONNX; ``indices`` when the node has a second output."""
        super().__init__()
        if len(kernel) not in _MAX_POOLS:
            raise NotImplementedError(f"MaxPool over {len(kernel)} spatial dims")
        self.kernel, self.strides, self.dilations = kernel, strides, dilations
        self.pads, self.auto_pad, self.ceil_mode = pads, auto_pad, ceil_mode
        self.column_major, self.indices = column_major, indices

    def _padding(self, sizes) -> list[tuple[int, int]]:
        spans = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True)]
        result = []
        for axis, (size, stride, span) in enumerate(zip(sizes, self.strides, spans,
                                                         strict=True)):
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
                small, large = total // 2, total - total // 2
                begin, end = (small, large) if self.auto_pad == "SAME_UPPER" else (large, small)
            elif self.pads and self.auto_pad == "NOTSET":
                begin, end = self.pads[axis], self.pads[axis + len(sizes)]
            else:
                begin, end = 0, 0
            room = size + begin + end - span
            windows = (math.ceil(room / stride) if self.ceil_mode else room // stride) + 1
            if self.ceil_mode and (windows - 1) * stride >= size + begin:
                windows -= 1  # the last window would start in the right padding
            result.append((begin, (windows - 1) * stride + span - size - begin))
        return result

    def forward(self, x: torch.Tensor):
        """Pooled ``x``, and the indices when the node asks for them."""
        sizes = tuple(x.shape[2:])
        padding = self._padding(sizes)
        flat = [amount for pair in reversed(padding) for amount in pair]
        lowest = float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min
        padded = F.pad(x, flat, value=lowest) if any(flat) else x
        pooled, where = _MAX_POOLS[len(sizes)](padded, self.kernel, self.strides, 0,
                                               self.dilations, return_indices=True)
        if not self.indices:
            return pooled
        return pooled, self._onnx_indices(where, x.shape, padded.shape[2:], padding)

    def _onnx_indices(self, where: torch.Tensor, shape, padded_sizes, padding) -> torch.Tensor:
        coordinates = []
        for size in reversed(padded_sizes):  # unravel the padded plane's flat index
            coordinates.append(where % size)
            where = where // size
        coordinates = [c - begin for c, (begin, _) in
                       zip(reversed(coordinates), padding, strict=True)]
        sizes = list(shape[2:])
        order = list(reversed(range(len(sizes)))) if self.column_major else range(len(sizes))
        flat = torch.zeros_like(coordinates[0])
        for axis in order:
            flat = flat * sizes[axis] + coordinates[axis]
        batch, channels = shape[0], shape[1]
        plane = math.prod(sizes)
        base = torch.arange(batch * channels, device=flat.device).reshape(batch, channels)
        return flat + (base * plane).reshape(batch, channels, *([1] * len(sizes)))


@converter("MaxPool", [1, 8, 10, 11, 12, 22], replaces=True)
def convert_max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """MaxPool-1..22; replaces the stock converter (no Indices, torch's padding cap)."""
    del graph
    module = OnnxMaxPool(*_window(node.attributes),
                         bool(node.attributes.get("storage_order", 0)),
                         indices=len([name for name in node.output_values if name]) > 1)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
