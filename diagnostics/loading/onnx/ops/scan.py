"""ONNX ``Scan`` (opsets 9-21), which onnx2torch 1.5.15 cannot convert: the body runs per step.

jax2onnx writes ``jax.lax.scan`` — a Flax ``nn.RNN`` over an LSTM/GRU cell, any hand-written
recurrence — as ``Scan``: state variables carried from step to step, scan inputs read one slice
per step along their scan axis, scan outputs stacked along theirs. The body is converted once
(as a ``Loop`` body is, :mod:`.loop`), and :class:`OnnxScan` calls it once per step, so autograd
sees the unrolled recurrence and a weight's gradient is the sum over steps.

Outer values the body reads become extra ``forward`` arguments after the scan's own inputs. The
first float scan input is the sequence the temporal profiler reads (``sequence_argument``,
``layout``), as for a ``Loop`` that reads a sequence one step per iteration.
"""

from __future__ import annotations

import onnx2torch
import torch
from onnx import NodeProto
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import fx, nn

from diagnostics.loading.onnx.checks import FLOAT_TYPES
from diagnostics.loading.onnx.fx_outputs import return_graph_outputs
from diagnostics.loading.onnx.graph import captured_names
from diagnostics.loading.onnx.ops.loop import MAX_ITERATIONS, outer_value_info, subgraph_model
from diagnostics.loading.onnx.ops.registry import converter


class OnnxScan(nn.Module, OnnxToTorchModule):
    """``Scan(states..., scan_inputs...)`` with its body converted to a torch module."""

    def __init__(self, body: fx.GraphModule, *, states: int, input_axes: list[int],
                 input_reversed: list[bool], output_axes: list[int],
                 output_reversed: list[bool], sequence_argument: int | None) -> None:
        """Configure the scan.

        Args:
            body: Called as ``body(*states, *step_slices, *captured)``; returns
                ``(*new_states, *step_outputs)``.
            states: Number of state variables.
            input_axes, input_reversed: Per scan input, its scan axis and whether it is read
                last step first.
            output_axes, output_reversed: Per scan output, the axis it is stacked along and
                whether the steps are stacked in reverse.
            sequence_argument: Index in ``forward``'s arguments of the float scan input the
                temporal profiler reads, or None.
        """
        super().__init__()
        self.body = body
        self.states = states
        self.input_axes, self.input_reversed = input_axes, input_reversed
        self.output_axes, self.output_reversed = output_axes, output_reversed
        self.sequence_argument = sequence_argument
        self.layout = input_axes[0] if input_axes else 0  # the profiler reads the time axis here
        if sequence_argument is not None:
            self.layout = input_axes[sequence_argument - states]

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the body once per step; the final states, then the stacked scan outputs."""
        scans = len(self.input_axes)
        values = list(args[:self.states])
        inputs = [_axis_first(x, axis) for x, axis in
                  zip(args[self.states:self.states + scans], self.input_axes, strict=True)]
        captured = args[self.states + scans:]
        steps = int(inputs[0].shape[0]) if inputs else 0
        if steps > MAX_ITERATIONS:
            raise RuntimeError(f"Scan over {steps} steps; refusing to unroll past "
                               f"{MAX_ITERATIONS}")
        if any(int(x.shape[0]) != steps for x in inputs):
            raise RuntimeError("Scan inputs differ in length along their scan axes")
        outputs: list[list[torch.Tensor]] = []
        for step in range(steps):
            slices = [x[steps - 1 - step] if reverse else x[step]
                      for x, reverse in zip(inputs, self.input_reversed, strict=True)]
            results = self.body(*values, *slices, *captured)
            results = results if isinstance(results, tuple) else (results,)
            values = list(results[:self.states])
            if not outputs:
                outputs = [[] for _ in results[self.states:]]
            for stack, value in zip(outputs, results[self.states:], strict=True):
                stack.append(value)
        if steps == 0 and self.output_axes:
            raise RuntimeError("Scan ran no step: its scan outputs have no defined shape")
        stacked = []
        for stack, axis, reverse in zip(outputs, self.output_axes, self.output_reversed,
                                        strict=True):
            ordered = stack[::-1] if reverse else stack
            stacked.append(torch.stack(ordered).movedim(0, axis))
        result = (*values, *stacked)
        return result[0] if len(result) == 1 else result


def _axis_first(x: torch.Tensor, axis: int) -> torch.Tensor:
    return x.movedim(axis if axis >= 0 else x.dim() + axis, 0)


def _ints(node: NodeProto, name: str, count: int) -> list[int]:
    found = next((list(a.ints) for a in node.attribute if a.name == name), None)
    return [int(v) for v in found] if found else [0] * count


@converter("Scan", [9, 11, 16, 19, 21, 23, 24, 25])
def convert_scan(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """A ``Scan`` node as one :class:`OnnxScan` running its converted body."""
    proto: NodeProto = node.proto
    body = next(a.g for a in proto.attribute if a.name == "body")
    scans = next(a.i for a in proto.attribute if a.name == "num_scan_inputs")
    inputs = list(node.input_values)
    states = len(inputs) - scans
    if any(not name for name in inputs):
        raise NotImplementedError("Scan with an omitted input")
    outputs = len(body.output) - states
    captured = captured_names(proto)
    model = subgraph_model(body, captured, graph)
    module = onnx2torch.convert(model, attach_onnx_mapping=True)
    return_graph_outputs(module, model.graph, unwrap_single=False)
    input_axes = _ints(proto, "scan_input_axes", scans)
    output_axes = _ints(proto, "scan_output_axes", outputs)
    sequence = next((states + i for i, name in enumerate(inputs[states:])
                     if _is_float(name, graph)), None)
    scan = OnnxScan(module, states=states, input_axes=input_axes,
                    input_reversed=[bool(v) for v in _ints(proto, "scan_input_directions",
                                                           scans)],
                    output_axes=output_axes,
                    output_reversed=[bool(v) for v in _ints(proto, "scan_output_directions",
                                                            outputs)],
                    sequence_argument=sequence)
    return OperationConverterResult(
        torch_module=scan,
        onnx_mapping=OnnxMapping(inputs=(*inputs, *captured), outputs=node.output_values))


def _is_float(name: str, graph: OnnxGraph) -> bool:
    info = outer_value_info(graph, name)
    if info is None or not info.type.HasField("tensor_type"):
        return False
    return info.type.tensor_type.elem_type in FLOAT_TYPES
