"""Shape and layout ops: Reshape, Flatten, Split, Shape, DepthToSpace, SpaceToDepth and Size.

Stock converters replaced (``replaces=True``) and why:

* Reshape-5/13/14: ``allowzero=1`` (a 0 in the shape is a real zero-size dimension, which
  exporters emit for opset >= 14) raised NotImplementedError. Reshape-19/21/23+ only added
  types, so one converter serves all versions.
* Flatten-9/11/13: ``axis=0`` flattened to ``end_dim=-1`` (wrong output) and ``axis=rank``
  crashed; the standard output is always ``(prod(shape[:axis]), prod(shape[axis:]))``.
* Split-2/11/13: a single-output Split returned a one-element tuple where onnx2torch wires a
  tensor. Split-18 adds ``num_outputs`` (the last chunk may be smaller).
* Shape-1/13/15: an empty slice (``start >= end``) came out as float32; Shape is always int64.
  Shape-19/21/23+ only added types.
* DepthToSpace-11/13: the default ``DCR`` mode was refused; both modes are here, and 28.

Added (onnx2torch lacks them): SpaceToDepth-1/13/28 and Size-1..25. SpaceToDepth is the
inverse of DepthToSpace: ``DCR`` (the default) orders the output channels block-row,
block-column, then input channel; ``CRD`` (opset 28) orders them channel first, which is
``F.pixel_unshuffle``.
"""

from __future__ import annotations

import math

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import (
    constant_ints,
    input_at,
    mapping,
    normalize_axis,
    runtime_input,
)
from diagnostics.loading.onnx.ops.registry import converter

_NEWER = (19, 21, 23, 24, 25)


class OnnxReshape(nn.Module, OnnxToTorchModule):
    """ONNX Reshape: 0 copies the input dimension (or is a zero dimension with ``allowzero``)."""

    def __init__(self, shape: list[int] | None, *, allowzero: bool) -> None:
        """``shape`` fixed at conversion, or None to read it in ``forward``."""
        super().__init__()
        self.shape, self.allowzero = shape, allowzero

    def forward(self, data: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """``data`` reshaped to the target shape."""
        target = self.shape if self.shape is not None else [
            int(v) for v in runtime_input(shape, "Reshape", "shape").tolist()]
        if not self.allowzero:
            target = [data.shape[i] if size == 0 else size for i, size in enumerate(target)]
        return torch.reshape(data, target)


@converter("Reshape", [5, 13, 14], replaces=True)
@converter("Reshape", _NEWER)
def convert_reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Reshape with constant or computed shape, honouring ``allowzero``."""
    shape = constant_ints(input_at(node, 1), graph)
    module = OnnxReshape(shape, allowzero=bool(node.attributes.get("allowzero", 0)))
    inputs = node.input_values[:1] if shape is not None else node.input_values[:2]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))


class OnnxFlatten(nn.Module, OnnxToTorchModule):
    """ONNX Flatten: a 2-D view ``(prod(shape[:axis]), prod(shape[axis:]))``."""

    def __init__(self, axis: int) -> None:
        """Split the dimensions before ``axis`` (may be negative, 0 or the rank)."""
        super().__init__()
        self.axis = axis

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        """The 2-D flattened tensor."""
        axis = normalize_axis(self.axis, data.dim())
        return data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))


@converter("Flatten", [9, 11, 13], replaces=True)
@converter("Flatten", (21, 23, 24, 25))
def convert_flatten(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Flatten at any axis in ``[-rank, rank]``."""
    del graph
    return OperationConverterResult(torch_module=OnnxFlatten(node.attributes.get("axis", 1)),
                                    onnx_mapping=mapping(node, node.input_values[:1]))


class OnnxSplit(nn.Module, OnnxToTorchModule):
    """ONNX Split into ``outputs`` pieces along ``axis``."""

    def __init__(self, axis: int, outputs: int, sizes: list[int] | None, *,
                 uneven: bool) -> None:
        """Split by ``sizes``, else in ``outputs`` chunks (the last smaller when ``uneven``)."""
        super().__init__()
        self.axis, self.outputs, self.sizes, self.uneven = axis, outputs, sizes, uneven

    def forward(self, data: torch.Tensor,
                split: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The pieces, or the single piece as a tensor when the node has one output."""
        sizes = self.sizes
        if sizes is None and split is not None and split.numel() > 0:
            sizes = [int(v) for v in split.tolist()]
        if sizes is None:
            length = data.shape[self.axis]
            chunk = -(-length // self.outputs) if self.uneven else length // self.outputs
            sizes = [min(chunk, max(length - i * chunk, 0)) for i in range(self.outputs)]
        pieces = torch.split(data, sizes, dim=self.axis)
        return pieces[0] if self.outputs == 1 else tuple(pieces)


@converter("Split", [2, 11, 13], replaces=True)
@converter("Split", [18])
def convert_split(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Split with sizes from the attribute (< 13), a constant or computed input, or evenly."""
    attributes = node.attributes
    outputs = len(node.output_values)
    sizes = attributes.get("split")
    split_name = input_at(node, 1)
    if sizes is None and split_name:
        sizes = constant_ints(split_name, graph)
    module = OnnxSplit(attributes.get("axis", 0), outputs, sizes,
                       uneven="num_outputs" in attributes)
    dynamic = sizes is None and bool(split_name)
    inputs = node.input_values[:2] if dynamic else node.input_values[:1]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))


class OnnxShape(nn.Module, OnnxToTorchModule):
    """The input's shape (``start:end`` of it) as int64."""

    def __init__(self, start: int, end: int | None) -> None:
        """Slice of the dimensions, Python-style (negative counts from the end)."""
        super().__init__()
        self.start, self.end = start, end

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        """``int64 [k]``."""
        return torch.tensor(data.shape[self.start:self.end], dtype=torch.int64,
                            device=data.device)


@converter("Shape", [1, 13, 15], replaces=True)
@converter("Shape", _NEWER)
def convert_shape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Shape with optional ``start``/``end`` (opset 15+)."""
    del graph
    module = OnnxShape(node.attributes.get("start", 0), node.attributes.get("end"))
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, node.input_values[:1]))


class OnnxDepthToSpace(nn.Module, OnnxToTorchModule):
    """Move ``blocksize²`` channel blocks into spatial blocks (DCR or CRD order)."""

    def __init__(self, blocksize: int, mode: str) -> None:
        """``mode`` is ``DCR`` (depth-column-row, the default) or ``CRD``."""
        super().__init__()
        if mode not in ("DCR", "CRD"):
            raise NotImplementedError(f"DepthToSpace mode={mode!r}")
        self.blocksize, self.mode = blocksize, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C / b², H·b, W·b]``."""
        n, c, h, w = x.shape
        b = self.blocksize
        if self.mode == "DCR":
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (b * b), h * b, w * b)


@converter("DepthToSpace", [1, 11, 13], replaces=True)
@converter("DepthToSpace", [28])
def convert_depth_to_space(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """DepthToSpace in either mode."""
    del graph
    module = OnnxDepthToSpace(int(node.attributes["blocksize"]),
                              str(node.attributes.get("mode", "DCR")))
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, node.input_values[:1]))


# Permutations of [N, C, H/b, b, W/b, b] giving the output channel order of each mode.
_ORDERS = {"DCR": (0, 3, 5, 1, 2, 4), "CRD": (0, 1, 3, 5, 2, 4)}


class OnnxSpaceToDepth(nn.Module, OnnxToTorchModule):
    """``[N, C, H, W] -> [N, C·b², H/b, W/b]``."""

    def __init__(self, blocksize: int, mode: str) -> None:
        """``mode`` is ``DCR`` or ``CRD``."""
        super().__init__()
        if mode not in _ORDERS:
            raise NotImplementedError(f"SpaceToDepth mode={mode!r}")
        self.blocksize, self.order = blocksize, _ORDERS[mode]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks moved into channels."""
        batch, channels, height, width = x.shape
        b = self.blocksize
        blocks = x.reshape(batch, channels, height // b, b, width // b, b).permute(self.order)
        return blocks.reshape(batch, channels * b * b, height // b, width // b)


class OnnxSize(nn.Module, OnnxToTorchModule):
    """The number of elements, as a 0-d int64 tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x.numel()``."""
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@converter("SpaceToDepth", [1, 13, 28])
def convert_space_to_depth(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """SpaceToDepth-1/13 (DCR) and -28 (``mode``)."""
    del graph
    mode = node.attributes.get("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return OperationConverterResult(
        torch_module=OnnxSpaceToDepth(int(node.attributes["blocksize"]), mode),
        onnx_mapping=onnx_mapping_from_node(node),
    )


@converter("Size", [1, 13, 19, 21, 23, 24, 25])
def convert_size(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Size-1..25 (later versions only widen the input types)."""
    del graph
    return OperationConverterResult(torch_module=OnnxSize(),
                                    onnx_mapping=onnx_mapping_from_node(node))
