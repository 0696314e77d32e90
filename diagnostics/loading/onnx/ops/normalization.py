"""Normalizations: LayerNormalization-17 and BatchNormalization (fixes) and Group-, RMS-, Lp-
and MeanVarianceNormalization (onnx2torch lacks them).

Stock LayerNormalization-17 is replaced (``replaces=True``): it built ``nn.LayerNorm`` with the
normalized shape read from the *declared* input shape, so a dynamic dimension (declared 0) or a
missing value_info gave the wrong shape or a crash; it ignored the optional Mean/InvStdDev
outputs (a node listing them had its first output indexed instead), ``stash_type`` and a
broadcastable Scale; and it baked copies of Scale/B into the module. Here the normalized shape
comes from the runtime input and Scale/B are ``forward`` inputs, so the loader binds them to the
initializers the file names. With Scale of the normalized shape the math is ``F.layer_norm``,
the gradient a torch LayerNorm gets.

Stock BatchNormalization-9/14/15 is replaced (``replaces=True``) where it fails, and called
otherwise: an ordinary BatchNorm (running statistics stored as initializers, inference mode)
stays its ``nn.BatchNorm*d``, which the probe switches to batch statistics. It failed on the two
graphs scaled weight standardization (timm's NF-ResNets and NFNets: ``F.batch_norm`` on the
conv *weight*, training=True) exports to. The legacy exporter writes ``training_mode=1`` with
the running-statistics outputs, which it refused. The dynamo exporter writes inference mode with
mean and var computed from the weight; it passed those to ``F.batch_norm`` as running
statistics, which refuses tensors that require grad. Here both follow the ONNX spec:
training mode normalizes with the input's own statistics whatever ``self.training`` is (the
given mean and var only enter the running outputs), and computed statistics in inference mode
are ordinary differentiable tensors, so the gradient reaches the weight through them.

In every op here (the stock BatchNorm aside) Scale and bias come in as forward inputs (not module
parameters), so the loader binds their initializers to trainable parameters under their ONNX
names like any other weight. Statistics of the ops with a ``stash_type`` are computed in float32
at least (``stash_type`` 1, the default and the only value exporters write) and the result cast
back to the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
)
from torch import nn

from diagnostics.loading.onnx.ops._common import mapping, normalize_axis
from diagnostics.loading.onnx.ops.registry import converter


def _stash(x: torch.Tensor, stash_type: int = 1) -> torch.Tensor:
    # stash_type 1 (the default) asks for float32 statistics; only narrower floats change
    if stash_type == 1 and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


class OnnxLayerNorm(nn.Module, OnnxToTorchModule):
    """LayerNormalization over dimensions ``axis..rank-1`` with Y, Mean and InvStdDev."""

    def __init__(self, axis: int, epsilon: float, stash_type: int, outputs: int) -> None:
        """Normalize from ``axis``; ``outputs`` is how many of Y, Mean, InvStdDev are listed."""
        super().__init__()
        self.axis, self.epsilon, self.stash_type, self.outputs = axis, epsilon, stash_type, outputs

    def forward(self, x: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Y (and the statistics, shaped ``x.shape[:axis] + [1, ...]``)."""
        axis = normalize_axis(self.axis, x.dim())
        shape = tuple(x.shape[axis:])
        work = _stash(x, self.stash_type)
        if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            y = F.layer_norm(work, shape, scale.to(work.dtype),
                             None if bias is None else bias.to(work.dtype), self.epsilon)
        else:  # a Scale/B that only broadcasts to the normalized shape
            y = F.layer_norm(work, shape, None, None, self.epsilon) * scale
            y = y if bias is None else y + bias
        y = y.to(x.dtype)
        if self.outputs == 1:
            return y
        dims = tuple(range(axis, x.dim()))
        mean = work.mean(dim=dims, keepdim=True)
        variance = work.var(dim=dims, unbiased=False, keepdim=True)
        return (y, mean, torch.rsqrt(variance + self.epsilon))[: self.outputs]


def _result(node: OnnxNode, module: nn.Module) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))


@converter("LayerNormalization", [17], replaces=True)
def convert_layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """LayerNormalization-17."""
    del graph
    attributes = node.attributes
    return _result(node, OnnxLayerNorm(attributes.get("axis", -1),
                                       float(attributes.get("epsilon", 1e-5)),
                                       int(attributes.get("stash_type", 1)),
                                       len(node.output_values)))


class OnnxBatchNormalization(nn.Module, OnnxToTorchModule):
    """BatchNormalization as the ONNX spec states it, whatever ``self.training`` is.

    In training mode Y is normalized with the input's mean and variance over every axis but the
    channel (torch's ``F.batch_norm``, the gradient a torch model in training mode gets); the
    given mean and var enter only the running statistics. In inference mode Y is normalized with
    the given mean and var, differentiable like any computed tensor.
    """

    def __init__(self, epsilon: float, momentum: float, batch_statistics: bool,
                 outputs: int) -> None:
        """ONNX ``epsilon`` and ``momentum`` (the running statistics' own weight);
        ``batch_statistics`` is training mode; ``outputs`` is how many outputs are listed."""
        super().__init__()
        self.epsilon, self.momentum = epsilon, momentum
        self.batch_statistics, self.outputs = batch_statistics, outputs

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                mean: torch.Tensor, var: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Y, then as listed the running mean and var and (opset 9) the batch's mean and var."""
        if not self.batch_statistics:
            return _normalize_per_channel(x, scale, bias, mean, var, self.epsilon)
        y = F.batch_norm(x, None, None, scale, bias, training=True, eps=self.epsilon)
        # The spec's statistics: the population variance (torch's running_var is unbiased).
        batch_var, batch_mean = torch.var_mean(x, dim=(0, *range(2, x.dim())), correction=0)
        batch_mean, batch_var = batch_mean.to(mean.dtype), batch_var.to(var.dtype)
        running_mean = mean * self.momentum + batch_mean * (1 - self.momentum)
        running_var = var * self.momentum + batch_var * (1 - self.momentum)
        return (y, running_mean, running_var, batch_mean, batch_var)[: self.outputs]


def _normalize_per_channel(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                           mean: torch.Tensor, var: torch.Tensor, epsilon: float) -> torch.Tensor:
    # The spec's formula term by term, so a computed mean and var get their gradients (torch's
    # batch_norm takes running statistics as constants and refuses ones that require grad).
    shape = (1, -1) + (1,) * (x.dim() - 2)
    centred = x - mean.reshape(shape)
    y = scale.reshape(shape) * centred / torch.sqrt(var.reshape(shape) + epsilon)
    return (y + bias.reshape(shape)).to(x.dtype)


# onnx2torch's own (one function serves 9, 14 and 15): ours falls back to it where it works.
STOCK_BATCH_NORM = get_converter("BatchNormalization", 15)


def _batch_normalization(node: OnnxNode, graph: OnnxGraph,
                         training: bool) -> OperationConverterResult:
    mean, var = node.input_values[3], node.input_values[4]
    if not training and mean in graph.initializers and var in graph.initializers:
        return STOCK_BATCH_NORM(node, graph)
    attributes = node.attributes
    return _result(node, OnnxBatchNormalization(float(attributes.get("epsilon", 1e-5)),
                                                float(attributes.get("momentum", 0.9)),
                                                training, len(node.output_values)))


@converter("BatchNormalization", [9], replaces=True)
def convert_batch_normalization_9(node: OnnxNode,
                                  graph: OnnxGraph) -> OperationConverterResult:
    """BatchNormalization-9: training mode is a node listing more outputs than Y."""
    return _batch_normalization(node, graph, training=len(node.output_values) > 1)


@converter("BatchNormalization", [14, 15], replaces=True)
def convert_batch_normalization(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """BatchNormalization-14/15: training mode is the ``training_mode`` attribute."""
    return _batch_normalization(node, graph, training=bool(node.attributes.get("training_mode", 0)))


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
