"""ONNX ``If``, which onnx2torch 1.5.15 cannot convert: run the branch the condition picks.

The legacy exporter writes torchvision's detection models with ``If`` nodes (Faster/Mask/
Keypoint R-CNN, RetinaNet, FCOS, SSD: "no boxes left → return empty tensors" around the batched
non-maximum suppression); scripted models write any Python ``if`` on a tensor that way. Each
branch is converted once, with onnx2torch and our converters, into a module (as a ``Loop`` body
is, :mod:`.loop`); :class:`OnnxIf` evaluates the condition on each pass and calls one of them,
so autograd sees exactly the branch that ran, as in the framework that exported it.

Outer values a branch reads become ``forward`` arguments after the condition (the loader binds
float initializers among them to parameters like any node input); both branches take them all.
"""

from __future__ import annotations

import onnx2torch
import torch
from onnx import NodeProto
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import fx, nn

from diagnostics.loading.onnx.fx_outputs import return_graph_outputs
from diagnostics.loading.onnx.graph import captured_names
from diagnostics.loading.onnx.ops.loop import subgraph_model
from diagnostics.loading.onnx.ops.registry import converter


class OnnxIf(nn.Module, OnnxToTorchModule):
    """``If(cond)`` with both branches converted to torch modules."""

    def __init__(self, then_branch: fx.GraphModule, else_branch: fx.GraphModule) -> None:
        """Both branches are called as ``branch(*captured)`` and return the If's outputs."""
        super().__init__()
        self.then_branch, self.else_branch = then_branch, else_branch

    def forward(self, condition: torch.Tensor,
                *captured: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The outputs of the branch ``condition`` selects."""
        if condition.numel() != 1:
            raise RuntimeError(f"If condition has {condition.numel()} elements, not one")
        branch = self.then_branch if bool(condition.reshape(())) else self.else_branch
        outputs = branch(*captured)
        return outputs[0] if isinstance(outputs, tuple) and len(outputs) == 1 else outputs


@converter("If", [1, 11, 13, 16, 19, 21, 23, 24, 25])
def convert_if(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """An ``If`` node as one :class:`OnnxIf` holding both converted branches."""
    proto: NodeProto = node.proto
    captured = captured_names(proto)
    branches = []
    for name in ("then_branch", "else_branch"):
        body = next(a.g for a in proto.attribute if a.name == name)
        model = subgraph_model(body, captured, graph)
        module = onnx2torch.convert(model, attach_onnx_mapping=True)
        return_graph_outputs(module, model.graph, unwrap_single=False)
        branches.append(module)
    module = OnnxIf(*branches)
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0], *captured),
                                 outputs=node.output_values))
