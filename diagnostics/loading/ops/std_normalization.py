"""Normalizations onnx2torch lacks: Group-, RMS-, Lp- and MeanVarianceNormalization.

Scale and bias come in as forward inputs (not module parameters), so the loader binds their
initializers to trainable parameters under their ONNX names like any other weight. Statistics
are computed in float32 at least (``stash_type`` 1, the default and the only value exporters
write) and the result cast back to the input's dtype.
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


def _stash(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 unless it is already float32 or wider (stash_type 1)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


class OnnxGroupNormalization(nn.Module, OnnxToTorchModule):
    """``scale * (x - mean) / sqrt(var + eps) + bias`` with statistics per sample and group.

    Opset 18 gives ``scale``/``bias`` one value per group, opset 21 one per channel.
    """

    def __init__(self, num_groups: int, epsilon: float, per_channel: bool) -> None:
        """Attributes as in ONNX; ``per_channel`` is True from opset 21."""
        super().__init__()
        self.num_groups, self.epsilon, self.per_channel = num_groups, epsilon, per_channel

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Normalized ``x``, same shape ``[N, C, ...]``."""
        batch, channels = x.shape[0], x.shape[1]
        grouped = _stash(x).reshape(batch, self.num_groups, -1)
        mean = grouped.mean(dim=-1, keepdim=True)
        variance = grouped.var(dim=-1, unbiased=False, keepdim=True)
        normalized = ((grouped - mean) / torch.sqrt(variance + self.epsilon)).reshape(x.shape)
        normalized = normalized.to(x.dtype)
        if not self.per_channel:
            scale = scale.repeat_interleave(channels // self.num_groups)
            bias = bias.repeat_interleave(channels // self.num_groups)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        return normalized * scale.reshape(shape) + bias.reshape(shape)


class OnnxRMSNormalization(nn.Module, OnnxToTorchModule):
    """``x / sqrt(mean(x², axes) + eps) * scale`` over the axes from ``axis`` to the last."""

    def __init__(self, axis: int, epsilon: float) -> None:
        """Attributes as in ONNX."""
        super().__init__()
        self.axis, self.epsilon = axis, epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Normalized ``x`` times ``scale`` (broadcast from the right)."""
        start = self.axis if self.axis >= 0 else self.axis + x.dim()
        axes = tuple(range(start, x.dim()))
        wide = _stash(x)
        mean_square = (wide * wide).mean(dim=axes, keepdim=True)
        return (wide / torch.sqrt(mean_square + self.epsilon)).to(x.dtype) * scale


class OnnxLpNormalization(nn.Module, OnnxToTorchModule):
    """``x / ||x||_p`` along ``axis``; zero where the norm is zero."""

    def __init__(self, axis: int, p: int) -> None:
        """``p`` is 1 or 2."""
        super().__init__()
        if p not in (1, 2):
            raise NotImplementedError(f"LpNormalization p={p}")
        self.axis, self.p = axis, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``x``."""
        norm = torch.linalg.vector_norm(x, ord=self.p, dim=self.axis, keepdim=True)
        # Divide by 1 where the norm is 0 (x is 0 there): x/0 would be NaN in the backward pass
        # even behind a torch.where.
        return x / torch.where(norm == 0, torch.ones_like(norm), norm)


class OnnxMeanVarianceNormalization(nn.Module, OnnxToTorchModule):
    """``(x - E[x]) / sqrt(E[(x - E[x])²])`` over ``axes``, as the ONNX function body.

    The body adds ``1e-9`` under the square root, which keeps constant slices finite.
    """

    _EPSILON = 1e-9

    def __init__(self, axes: tuple[int, ...]) -> None:
        """Reduction axes (default ``[0, 2, 3]``)."""
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``x``."""
        centred = x - x.mean(dim=self.axes, keepdim=True)
        variance = (centred * centred).mean(dim=self.axes, keepdim=True)
        return centred / torch.sqrt(variance + self._EPSILON)


def _result(node: OnnxNode, module: nn.Module) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _group_normalization(node: OnnxNode, *, per_channel: bool) -> OperationConverterResult:
    attributes = node.attributes
    if attributes.get("stash_type", 1) != 1:
        raise NotImplementedError("GroupNormalization stash_type other than 1 (float32)")
    return _result(node, OnnxGroupNormalization(int(attributes["num_groups"]),
                                                float(attributes.get("epsilon", 1e-5)),
                                                per_channel))


@converter("GroupNormalization", [18])
def convert_group_normalization_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GroupNormalization-18: scale and bias per group."""
    del graph
    return _group_normalization(node, per_channel=False)


@converter("GroupNormalization", [21])
def convert_group_normalization_21(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GroupNormalization-21: scale and bias per channel."""
    del graph
    return _group_normalization(node, per_channel=True)


@converter("RMSNormalization", [23])
def convert_rms_normalization(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """RMSNormalization-23."""
    del graph
    attributes = node.attributes
    if attributes.get("stash_type", 1) != 1:
        raise NotImplementedError("RMSNormalization stash_type other than 1 (float32)")
    return _result(node, OnnxRMSNormalization(int(attributes.get("axis", -1)),
                                              float(attributes.get("epsilon", 1e-5))))


@converter("LpNormalization", [1, 22])
def convert_lp_normalization(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """LpNormalization-1/22."""
    del graph
    attributes = node.attributes
    return _result(node, OnnxLpNormalization(int(attributes.get("axis", -1)),
                                             int(attributes.get("p", 2))))


@converter("MeanVarianceNormalization", [9, 13])
def convert_mean_variance_normalization(node: OnnxNode,
                                        graph: OnnxGraph) -> OperationConverterResult:
    """MeanVarianceNormalization-9/13."""
    del graph
    axes = tuple(node.attributes.get("axes", (0, 2, 3)))
    return _result(node, OnnxMeanVarianceNormalization(axes))
