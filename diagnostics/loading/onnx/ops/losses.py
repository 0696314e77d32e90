"""Loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (onnx2torch has neither).

Training graphs exported with their loss end in one of these; the gradient the probe reads is
the loss's gradient, so both are written with gather/sum over the ONNX definition (class axis 1,
optional per-class ``weight``, ``ignore_index``, reduction none/sum/mean, where mean divides by
the summed weights of the targets that count) rather than through ``F.nll_loss``, which
rejects targets outside ``[0, C)`` even when they are the ignored index.
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

from diagnostics.loading.onnx.ops.registry import converter

_REDUCTIONS = ("none", "sum", "mean")


def negative_log_likelihood(log_prob: torch.Tensor, target: torch.Tensor,
                            weight: torch.Tensor | None, reduction: str,
                            ignore_index: int | None) -> torch.Tensor:
    """ONNX NegativeLogLikelihoodLoss.

    Args:
        log_prob: ``[N, C, d1, ...]`` log-probabilities (class axis 1).
        target: ``[N, d1, ...]`` class indices.
        weight: Optional ``[C]`` class weights.
        reduction: ``none`` (per element), ``sum``, or ``mean`` (weighted mean).
        ignore_index: A target value that contributes nothing, or None.

    Returns:
        The loss, ``[N, d1, ...]`` for ``none``, a scalar otherwise.
    """
    target = target.to(torch.int64)
    counted = (target != ignore_index) if ignore_index is not None \
        else torch.ones_like(target, dtype=torch.bool)
    safe = torch.where(counted, target, 0)
    picked = -torch.gather(log_prob, 1, safe.unsqueeze(1)).squeeze(1)
    scale = counted.to(log_prob.dtype)
    if weight is not None:
        scale = scale * weight[safe]
    loss = picked * scale
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / scale.sum()


class OnnxNegativeLogLikelihoodLoss(nn.Module, OnnxToTorchModule):
    """NegativeLogLikelihoodLoss(input, target, weight?)."""

    def __init__(self, reduction: str, ignore_index: int | None) -> None:
        """Attributes as in ONNX."""
        super().__init__()
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor,  # ONNX input names
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """The loss (see :func:`negative_log_likelihood`)."""
        return negative_log_likelihood(input, target, weight, self.reduction, self.ignore_index)


class OnnxSoftmaxCrossEntropyLoss(nn.Module, OnnxToTorchModule):
    """SoftmaxCrossEntropyLoss(scores, labels, weights?) -> loss[, log_prob]."""

    def __init__(self, reduction: str, ignore_index: int | None, log_prob: bool) -> None:
        """Attributes as in ONNX; ``log_prob`` when the node asks for its second output."""
        super().__init__()
        self.reduction, self.ignore_index, self.log_prob = reduction, ignore_index, log_prob

    def forward(self, scores: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None):
        """The loss, and the log-softmax of ``scores`` over axis 1 when asked for."""
        log_prob = torch.log_softmax(scores, dim=1)
        loss = negative_log_likelihood(log_prob, labels, weights, self.reduction,
                                       self.ignore_index)
        return (loss, log_prob) if self.log_prob else loss


def _attributes(node: OnnxNode) -> tuple[str, int | None]:
    reduction = node.attributes.get("reduction", "mean")
    if reduction not in _REDUCTIONS:
        raise NotImplementedError(f"{node.operation_type} reduction={reduction!r}")
    return reduction, node.attributes.get("ignore_index")


@converter("NegativeLogLikelihoodLoss", [12, 13, 22])
def convert_nll_loss(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """NegativeLogLikelihoodLoss-12/13/22 (13 and 22 only widen types)."""
    del graph
    return OperationConverterResult(
        torch_module=OnnxNegativeLogLikelihoodLoss(*_attributes(node)),
        onnx_mapping=onnx_mapping_from_node(node),
    )


@converter("SoftmaxCrossEntropyLoss", [12, 13])
def convert_softmax_cross_entropy(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """SoftmaxCrossEntropyLoss-12/13."""
    del graph
    with_log_prob = len([name for name in node.output_values if name]) > 1
    return OperationConverterResult(
        torch_module=OnnxSoftmaxCrossEntropyLoss(*_attributes(node), log_prob=with_log_prob),
        onnx_mapping=onnx_mapping_from_node(node),
    )
