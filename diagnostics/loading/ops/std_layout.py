"""Layout and size ops onnx2torch lacks: SpaceToDepth-1/13/28 and Size-1..25.

SpaceToDepth is the inverse of DepthToSpace: ``DCR`` (the default) orders the output channels
block-row, block-column, then input channel; ``CRD`` (opset 28) orders them channel first,
which is ``F.pixel_unshuffle``.
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

from diagnostics.loading.ops.registry import converter

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
