"""Gradients that are zero in exact arithmetic are not judged on their magnitude.

A bias right before batch-statistics BatchNorm is removed again with the batch mean, and an
attention key bias shifts every score of a query alike (softmax is invariant to it): what float32
leaves of their gradients is rounding noise, far below float16's range, and must not raise
``fp16_underflow``.
"""

from __future__ import annotations

import torch
from torch import nn

from diagnostics import diagnose
from diagnostics.aggregate import CANCELLED_RELATIVE, cancelled_parameters
from diagnostics.report import Flag
from tests.onnx_export import export_legacy

_BIAS_BEFORE_BN = {
    "inputs": [{"name": "x", "shape": [16, 32]}],
    "layers": [{"type": "Linear", "in_features": 32, "out_features": 32},
               {"type": "BatchNorm1d", "num_features": 32}, {"type": "ReLU"},
               {"type": "Linear", "in_features": 32, "out_features": 4}],
}
_CONFIG = {"samples": 1, "verify_remedies": False}


def test_bias_before_batch_norm_is_noise_and_not_flagged():
    report = diagnose(_BIAS_BEFORE_BN, config={**_CONFIG, "norm_stats": "batch"})
    first = report.layers[0]
    grads = {p.name.rsplit(".", 1)[-1]: p.grad_norm.median for p in first.parameters}
    # the physics: Σ over the batch of ∂L/∂(BN input) is zero, so the bias gradient is noise
    assert grads["bias"] < CANCELLED_RELATIVE * grads["weight"]
    assert cancelled_parameters(first) == {"layers.0.bias"}
    assert Flag.FP16_UNDERFLOW not in first.flags
    # with running statistics BatchNorm is affine, the bias gradient is real and kept
    running = diagnose(_BIAS_BEFORE_BN, config={**_CONFIG, "norm_stats": "running"})
    assert cancelled_parameters(running.layers[0]) == set()


class _Attention(nn.Module):
    """Single-head self-attention with separate query/key/value projections (biases on)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / 4.0
        return self.out(torch.softmax(scores, dim=-1) @ self.value(x))


def test_attention_key_bias_is_noise_and_not_flagged():
    torch.manual_seed(0)
    onnx = export_legacy(_Attention().eval(), (torch.randn(2, 8, 16),), input_names=["x"],
                         do_constant_folding=False)
    report = diagnose(onnx, config=_CONFIG)
    noise = {name for layer in report.layers for name in cancelled_parameters(layer)}
    assert noise == {"key.bias"}
    key_bias = next(layer for layer in report.layers
                    if any(p.name == "key.bias" for p in layer.parameters))
    assert Flag.FP16_UNDERFLOW not in key_bias.flags
