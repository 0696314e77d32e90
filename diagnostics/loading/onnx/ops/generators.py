"""Ops that generate values: Bernoulli-15/22, Dropout-12+ (a fix) and the windows of opset 17.

The windows follow the ONNX definitions (Hamming with α = 25/46, β = 21/46, not torch's default
0.54/0.46), computed in float64 and cast to ``output_datatype``. Bernoulli draws with a generator
seeded by its ``seed`` attribute when the node has one, so such a model gives the same sample on
every run, as ONNX intends; otherwise from torch's global generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx import helper
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from diagnostics.loading.onnx.ops.registry import converter

_HAMMING_ALPHA = 25 / 46


def _torch_dtype(onnx_type: int, op_type: str) -> torch.dtype:
    try:
        return torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(onnx_type))).dtype
    except (KeyError, TypeError, ValueError):
        raise NotImplementedError(f"{op_type} output type {onnx_type} has no torch dtype") from None


class OnnxWindow(nn.Module, OnnxToTorchModule):
    """A window function of the length given by the scalar input."""

    def __init__(self, op_type: str, periodic: bool, dtype: torch.dtype) -> None:
        """``op_type`` is ``HannWindow``, ``HammingWindow`` or ``BlackmanWindow``."""
        super().__init__()
        self.op_type, self.periodic, self.dtype = op_type, periodic, dtype

    def forward(self, size: torch.Tensor) -> torch.Tensor:
        """The window, ``[size]``."""
        length = int(size.reshape(-1)[0].item())
        denominator = length if self.periodic else length - 1
        phase = 2 * math.pi * torch.arange(length, dtype=torch.float64) / max(denominator, 1)
        if self.op_type == "HannWindow":
            window = 0.5 - 0.5 * torch.cos(phase)
        elif self.op_type == "HammingWindow":
            window = _HAMMING_ALPHA - (1 - _HAMMING_ALPHA) * torch.cos(phase)
        else:
            window = 0.42 - 0.5 * torch.cos(phase) + 0.08 * torch.cos(2 * phase)
        return window.to(self.dtype)


class OnnxBernoulli(nn.Module, OnnxToTorchModule):
    """0/1 draws with the input's probabilities."""

    def __init__(self, dtype: torch.dtype | None, seed: float | None) -> None:
        """``dtype`` None keeps the input's; ``seed`` fixes the draws."""
        super().__init__()
        self.dtype, self.seed = dtype, seed

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Samples, same shape as ``probabilities``."""
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=probabilities.device)
            generator.manual_seed(int(self.seed))
        samples = torch.bernoulli(probabilities, generator=generator)
        return samples.to(self.dtype or probabilities.dtype)


@converter("HannWindow", [17])
@converter("HammingWindow", [17])
@converter("BlackmanWindow", [17])
def convert_window(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Hann/Hamming/BlackmanWindow-17."""
    del graph
    attributes = node.attributes
    dtype = _torch_dtype(attributes.get("output_datatype", 1), node.operation_type)
    module = OnnxWindow(node.operation_type, bool(attributes.get("periodic", 1)), dtype)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@converter("Bernoulli", [15, 22])
def convert_bernoulli(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Bernoulli-15/22."""
    del graph
    attributes = node.attributes
    dtype = attributes.get("dtype")
    module = OnnxBernoulli(_torch_dtype(dtype, "Bernoulli") if dtype is not None else None,
                           attributes.get("seed"))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class OnnxDropout(nn.Module, OnnxToTorchModule):
    """Dropout-12+ as ONNX defines it: identity unless the ``training_mode`` input is true.

    The stock module follows torch's train/eval flag instead (the loader always evaluates), and
    refuses a ``seed``; the optional second output is the keep mask.
    """

    def __init__(self, seed: float | None, mask: bool) -> None:
        """``seed`` fixes the draws; ``mask`` when the node asks for the mask output."""
        super().__init__()
        self.seed, self.mask = seed, mask

    def forward(self, data: torch.Tensor, ratio: torch.Tensor | None = None,
                training_mode: torch.Tensor | None = None):
        """``data`` scaled and masked in training mode, unchanged otherwise; and the mask."""
        rate = float(ratio.reshape(-1)[0].item()) if ratio is not None else 0.5
        training = training_mode is not None and bool(training_mode.reshape(-1)[0].item())
        if not training or rate == 0.0:
            keep = torch.ones_like(data, dtype=torch.bool)
            output = data
        else:
            generator = None
            if self.seed is not None:
                generator = torch.Generator(device=data.device)
                generator.manual_seed(int(self.seed))
            keep = torch.rand(data.shape, generator=generator, device=data.device) >= rate
            output = data * keep / (1.0 - rate)
        return (output, keep) if self.mask else output


@converter("Dropout", [12, 13, 22], replaces=True)
def convert_dropout(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Dropout-12/13/22 (ratio and training_mode as inputs)."""
    del graph
    module = OnnxDropout(node.attributes.get("seed"),
                         mask=len([name for name in node.output_values if name]) > 1)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
