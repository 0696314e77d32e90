"""Attention-23/24/25: scaled dot-product attention as ONNX defines it (onnx2torch lacks it).

The dynamo exporter emits this op for ``scaled_dot_product_attention`` at opset 23 and later.
Written after onnx's reference implementation (``onnx/reference/ops/op_attention.py``), in
plain torch ops so autograd sees the same computation: 3-D inputs split into heads, GQA/MQA by
repeating K/V heads, an optional KV cache (``past_key``/``past_value``) or external-cache lengths
(``nonpad_kv_seqlen``), causal masking aligned bottom-right, sliding windows (25), a boolean or
additive mask, ``softcap``, and a softmax that gives zero rows, not NaN, where every key is
masked. ``softmax_precision`` is honoured by computing the softmax in float32 at least.
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

from diagnostics.loading.onnx.ops.registry import converter


def _split_heads(x: torch.Tensor, heads: int | None) -> torch.Tensor:
    if heads is None:  # optional attributes, but the spec requires them with 3-D inputs
        raise ValueError("Attention with 3-D inputs needs q_num_heads and kv_num_heads")
    batch, length, hidden = x.shape
    return x.reshape(batch, length, heads, hidden // heads).transpose(1, 2)


def _safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; a row that is all ``-inf`` gives zeros instead of NaN."""
    top = scores.amax(dim=-1, keepdim=True).detach()  # softmax is invariant to the shift
    top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    weights = torch.exp(scores - top)
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


class OnnxAttention(nn.Module, OnnxToTorchModule):
    """ONNX Attention; returns ``Y`` or ``(Y, present_key, present_value, qk_matmul_output)``."""

    def __init__(self, attributes: dict, outputs: int) -> None:
        """Node attributes as onnx2torch parses them; ``outputs`` the node's output count."""
        super().__init__()
        self.scale = attributes.get("scale")
        self.is_causal = bool(attributes.get("is_causal", 0))
        self.q_num_heads: int | None = attributes.get("q_num_heads")
        self.kv_num_heads: int | None = attributes.get("kv_num_heads")
        self.softcap = float(attributes.get("softcap", 0.0))
        self.mode = int(attributes.get("qk_matmul_output_mode", 0))
        self.left = int(attributes.get("left_window_size", -1))
        self.right = int(attributes.get("right_window_size", -1))
        self.outputs = outputs

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: torch.Tensor | None = None, past_key: torch.Tensor | None = None,
                past_value: torch.Tensor | None = None,
                nonpad_kv_seqlen: torch.Tensor | None = None):
        """Attention output ``Y`` (same rank as ``q``), plus the optional outputs."""
        three_d = q.dim() == 3
        if three_d:
            q = _split_heads(q, self.q_num_heads)
            k = _split_heads(k, self.kv_num_heads)
            v = _split_heads(v, self.kv_num_heads)
        if past_key is not None:
            if past_value is None:
                raise ValueError("Attention: past_key is given without past_value")
            k = torch.cat([past_key, k], dim=2)
            v = torch.cat([past_value, v], dim=2)
        present_key, present_value = k, v
        bias = self._bias(q, k, attn_mask, past_key, nonpad_kv_seqlen)
        if q.shape[1] != k.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        scale = math.sqrt(self.scale if self.scale is not None else 1 / math.sqrt(q.shape[-1]))
        scores = torch.matmul(q * scale, (k * scale).transpose(-1, -2))
        if self.softcap > 0:
            scores = self.softcap * torch.tanh(scores / self.softcap)
        debug = scores
        with_bias = scores + bias
        if self.mode == 2 or (self.mode == 1 and self.softcap <= 0):
            debug = with_bias
        wide = with_bias if with_bias.dtype in (torch.float32, torch.float64) \
            else with_bias.float()
        weights = _safe_softmax(wide)
        masked_row = torch.isneginf(bias.amax(dim=-1, keepdim=True))
        weights = torch.where(masked_row, torch.zeros_like(weights), weights).to(q.dtype)
        if self.mode == 3:
            debug = weights
        y = torch.matmul(weights, v)
        if three_d:
            y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
        if self.outputs == 1:
            return y
        return (y, present_key, present_value, debug.to(q.dtype))[: self.outputs]

    def _bias(self, q, k, attn_mask, past_key, nonpad_kv_seqlen) -> torch.Tensor:
        q_len, kv_len = q.shape[2], k.shape[2]
        dtype, device = q.dtype, q.device
        bias = torch.zeros((q_len, kv_len), dtype=dtype, device=device)
        if attn_mask is not None:
            pad = kv_len - attn_mask.shape[-1]
            if pad > 0:  # a mask shorter than the keys masks the keys beyond it
                fill = False if attn_mask.dtype == torch.bool else float("-inf")
                padding = torch.full((*attn_mask.shape[:-1], pad), fill, dtype=attn_mask.dtype,
                                     device=device)
                attn_mask = torch.cat([attn_mask, padding], dim=-1)
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.where(attn_mask, 0.0, float("-inf")).to(dtype)
            bias = bias + attn_mask
        if past_key is None and nonpad_kv_seqlen is not None:
            offset = (nonpad_kv_seqlen.to(torch.int64) - q_len).reshape(-1, 1, 1, 1)
        else:
            offset = torch.tensor(past_key.shape[2] if past_key is not None else 0,
                                  device=device)
        rows = torch.arange(q_len, device=device).reshape(q_len, 1)
        cols = torch.arange(kv_len, device=device).reshape(1, kv_len)
        distance = rows + offset - cols  # query position minus key position
        allowed = torch.ones_like(distance, dtype=torch.bool)
        if self.is_causal:
            allowed &= distance >= 0
        if self.left >= 0:
            allowed &= distance <= self.left
        if self.right >= 0:
            allowed &= -distance <= self.right
        bias = bias + torch.where(allowed, 0.0, float("-inf")).to(dtype)
        if nonpad_kv_seqlen is not None:
            valid = cols < nonpad_kv_seqlen.to(torch.int64).reshape(-1, 1, 1, 1)
            bias = bias + torch.where(valid, 0.0, float("-inf")).to(dtype)
        return bias


@converter("Attention", [23, 24, 25])
def convert_attention(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Attention-23/24 (nonpad_kv_seqlen)/25 (sliding windows)."""
    del graph
    module = OnnxAttention(dict(node.attributes), outputs=len(node.output_values))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
