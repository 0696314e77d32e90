"""Col2Im: sum sliding blocks of columns back into an image (the adjoint of Im2Col).

timm's VOLO folds its outlook-attention windows back with it (dynamo exports ``F.fold`` as
Col2Im, opset 18). It is a transposed convolution with a one-hot kernel: block element k of
channel c goes to offset k of the block, so one grouped ``conv_transpose`` (1 to 3 spatial
axes) sums every block into the padded image, which is then cropped by the pads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import CONV_TRANSPOSE, constant_ints, input_at, mapping
from diagnostics.loading.onnx.ops.registry import converter


class OnnxCol2Im(nn.Module, OnnxToTorchModule):
    """[N, C·∏block, L] columns -> [N, C, *image], overlapping blocks summed."""

    def __init__(self, image: list[int] | None, block: list[int] | None,
                 dilations: list[int] | None, pads: list[int] | None,
                 strides: list[int] | None) -> None:
        """``image``/``block`` None: read from ``forward``'s inputs; attributes as in ONNX."""
        super().__init__()
        self.image, self.block = image, block
        self.dilations, self.pads, self.strides = dilations, pads, strides

    def forward(self, columns: torch.Tensor, image_shape: torch.Tensor | None = None,
                block_shape: torch.Tensor | None = None) -> torch.Tensor:
        """The folded image."""
        image = self.image or [int(v) for v in image_shape.tolist()]  # type: ignore[union-attr]
        block = self.block or [int(v) for v in block_shape.tolist()]  # type: ignore[union-attr]
        axes = len(image)
        if axes not in CONV_TRANSPOSE:
            raise NotImplementedError(f"Col2Im over {axes} spatial axes")
        dilations = self.dilations or [1] * axes
        strides = self.strides or [1] * axes
        pads = self.pads or [0] * 2 * axes
        padded = [size + pads[i] + pads[axes + i] for i, size in enumerate(image)]
        grid = [(padded[i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
                for i in range(axes)]
        size = math.prod(block)
        channels = columns.shape[1] // size
        kernel = torch.eye(size, dtype=columns.dtype, device=columns.device)
        kernel = kernel.reshape(size, 1, *block).repeat(channels, 1, *[1] * axes)
        folded = CONV_TRANSPOSE[axes](columns.reshape(*columns.shape[:2], *grid), kernel,
                                       stride=strides, dilation=dilations, groups=channels)
        short = [padded[i] - folded.shape[2 + i] for i in range(axes)]
        folded = F.pad(folded, [p for gap in reversed(short) for p in (0, gap)])
        for axis in range(axes):
            folded = folded.narrow(2 + axis, pads[axis], image[axis])
        return folded


@converter("Col2Im", [18])
def convert_col2im(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Col2Im; constant ``image_shape`` and ``block_shape`` baked in, others read per call."""
    image = constant_ints(input_at(node, 1), graph)
    block = constant_ints(input_at(node, 2), graph)
    attributes = node.attributes

    def ints(name: str) -> list[int] | None:
        value = attributes.get(name)
        return None if value is None else [int(v) for v in value]

    module = OnnxCol2Im(image, block, ints("dilations"), ints("pads"), ints("strides"))
    inputs = [node.input_values[0], "" if image else input_at(node, 1),
              "" if block else input_at(node, 2)]
    while inputs and not inputs[-1]:
        inputs.pop()
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=mapping(node, tuple(inputs)))
