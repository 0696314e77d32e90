"""GridSample: sample an image at the points of a grid of normalized coordinates; AffineGrid:
the grid of an affine transform (a spatial transformer's two halves).

torchvision's RAFT looks its correlation pyramid up with it (``F.grid_sample``, 48 nodes in a
``raft_small`` export), as do spatial transformers and deformable-attention models. It is
``torch.nn.functional.grid_sample``, which differentiates with respect to the image and the
grid. Opset 16 names the modes ``bilinear``/``bicubic``; opsets 20 and 22 call them
``linear``/``cubic`` and allow any number of spatial axes (torch: 2, and 3 without cubic).
AffineGrid (opset 20, what the legacy exporter writes for ``F.affine_grid``) is
``F.affine_grid``, differentiable with respect to θ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping
from diagnostics.loading.onnx.ops.registry import converter

_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest",
          "bicubic": "bicubic", "cubic": "bicubic"}
_PADDING = frozenset({"zeros", "border", "reflection"})


class OnnxGridSample(nn.Module, OnnxToTorchModule):
    """``F.grid_sample(x, grid)`` with ONNX's attributes."""

    def __init__(self, mode: str, padding_mode: str, align_corners: bool) -> None:
        super().__init__()
        self.mode, self.padding_mode, self.align_corners = mode, padding_mode, align_corners

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The sampled values, ``[N, C, *grid.shape[1:-1]]``."""
        if x.dim() not in (4, 5) or (x.dim() == 5 and self.mode == "bicubic"):
            raise NotImplementedError(
                f"GridSample over {x.dim() - 2} spatial axes with mode {self.mode!r}")
        return F.grid_sample(x, grid.to(x.dtype), mode=self.mode,
                             padding_mode=self.padding_mode, align_corners=self.align_corners)


@converter("GridSample", [16, 20, 22])
def convert_grid_sample(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GridSample with its mode, padding mode and corner alignment."""
    del graph
    attributes = node.attributes

    def text(name: str, default: str) -> str:
        value = attributes.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    mode, padding = text("mode", "linear"), text("padding_mode", "zeros")
    if mode not in _MODES or padding not in _PADDING:
        raise NotImplementedError(f"GridSample mode={mode!r} padding_mode={padding!r}")
    module = OnnxGridSample(_MODES[mode], padding, bool(attributes.get("align_corners", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))


class OnnxAffineGrid(nn.Module, OnnxToTorchModule):
    """``F.affine_grid(theta, size)``; ``size`` is read per call (it holds the batch size)."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, theta: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """The [N, *spatial, 2 or 3] grid."""
        return F.affine_grid(theta, [int(v) for v in size.tolist()],
                             align_corners=self.align_corners)


@converter("AffineGrid", [20])
def convert_affine_grid(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """AffineGrid with its corner alignment."""
    del graph
    module = OnnxAffineGrid(bool(node.attributes.get("align_corners", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))

