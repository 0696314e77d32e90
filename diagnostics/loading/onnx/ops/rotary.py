"""RotaryEmbedding-23: the rotary position embedding of Llama-style models at opset 23.

Follows the standard's definition (onnx's reference ``rotary_embedding``): the first
``rotary_embedding_dim`` features of every head are rotated pairwise by the cached cos/sin of
the token's position, halves (``interleaved=0``) or even/odd pairs (``interleaved=1``); the
rest pass through. Differentiable in ``X`` and in the caches.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping
from diagnostics.loading.onnx.ops.registry import converter


class OnnxRotaryEmbedding(nn.Module, OnnxToTorchModule):
    """Rotary embedding of ``[B, heads, S, D]`` or ``[B, S, heads·D]`` inputs."""

    def __init__(self, interleaved: bool, rotary_dim: int, num_heads: int) -> None:
        """Attributes as in ONNX (``rotary_dim`` 0: the whole head)."""
        super().__init__()
        self.interleaved, self.rotary_dim, self.num_heads = interleaved, rotary_dim, num_heads

    def forward(self, x: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The rotated input, same shape as ``x``."""
        shape = x.shape
        if x.dim() == 4:
            x = x.transpose(1, 2)  # [B, S, heads, D]
        else:
            x = x.reshape(shape[0], shape[1], self.num_heads, shape[2] // self.num_heads)
        dim = self.rotary_dim or x.shape[-1]
        rotate, keep = x[..., :dim], x[..., dim:]
        if position_ids is not None:
            cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
        cos, sin = cos_cache.unsqueeze(2), sin_cache.unsqueeze(2)  # [B, S, 1, dim/2]
        if self.interleaved:
            first, second = rotate[..., 0::2], rotate[..., 1::2]
        else:
            first, second = rotate.chunk(2, dim=-1)
        real = cos * first - sin * second
        imag = sin * first + cos * second
        if self.interleaved:
            rotated = torch.stack((real, imag), dim=-1).reshape(rotate.shape)
        else:
            rotated = torch.cat((real, imag), dim=-1)
        out = torch.cat((rotated, keep), dim=-1)
        return out.transpose(1, 2) if len(shape) == 4 else out.reshape(shape)


@converter("RotaryEmbedding", [23])
def convert_rotary_embedding(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """RotaryEmbedding-23."""
    del graph
    attributes = node.attributes
    module = OnnxRotaryEmbedding(bool(attributes.get("interleaved", 0)),
                                 int(attributes.get("rotary_embedding_dim", 0)),
                                 int(attributes.get("num_heads", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))
