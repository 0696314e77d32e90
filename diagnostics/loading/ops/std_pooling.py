"""Pooling: GlobalMaxPool-1/22 and LpPool-11/18/22 (onnx2torch lacks them), MaxPool (a fix).

LpPool is ``(sum over the window of |x|^p)^(1/p)``: computed as a convolution of ``|x|^p`` with
a kernel of ones, which gives strides, dilations (18) and any padding for 1-3 spatial dims in
one call; zero padding is exact because padded elements add ``0^p = 0``. MaxPool replaces the
stock converter, which has no Indices output and fails on pads over half the kernel.
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

from diagnostics.loading.ops.registry import converter

_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


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
        if len(kernel) not in _CONVOLUTIONS:
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
        summed = _CONVOLUTIONS[len(self.kernel)](powered, ones, stride=self.strides,
                                                 dilation=self.dilations)
        return summed.pow(1.0 / self.p).reshape(batch, channels, *summed.shape[2:])


@converter("GlobalMaxPool", [1, 22])
def convert_global_max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GlobalMaxPool-1/22."""
    del graph
    return OperationConverterResult(torch_module=OnnxGlobalMaxPool(),
                                    onnx_mapping=onnx_mapping_from_node(node))


@converter("LpPool", [11, 18, 22])
def convert_lp_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """LpPool-11 and -18/22 (dilations, ceil_mode)."""
    del graph
    attributes = node.attributes
    kernel = tuple(attributes["kernel_shape"])
    ones = (1,) * len(kernel)
    auto_pad = attributes.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pads = attributes.get("pads")
    module = OnnxLpPool(kernel, tuple(attributes.get("strides", ones)),
                        tuple(attributes.get("dilations", ones)),
                        tuple(pads) if pads is not None else None, auto_pad,
                        bool(attributes.get("ceil_mode", 0)), int(attributes.get("p", 2)))
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
    attributes = node.attributes
    kernel = tuple(attributes["kernel_shape"])
    ones = (1,) * len(kernel)
    auto_pad = attributes.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pads = attributes.get("pads")
    module = OnnxMaxPool(kernel, tuple(attributes.get("strides", ones)),
                         tuple(attributes.get("dilations", ones)),
                         tuple(pads) if pads is not None else None, auto_pad,
                         bool(attributes.get("ceil_mode", 0)),
                         bool(attributes.get("storage_order", 0)),
                         indices=len([name for name in node.output_values if name]) > 1)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
