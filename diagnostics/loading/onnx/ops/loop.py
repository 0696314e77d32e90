"""ONNX ``Loop`` (opsets 1-21), which onnx2torch 1.5.15 cannot convert: the body runs per iteration.

tf2onnx writes a Keras GRU (and any ``tf.while_loop``) as a ``Loop`` whose body is one cell
step: it reads step ``t`` of the sequence (a value of the outer graph, captured by name) with
``Gather(sequence, counter)``, updates the carried state and emits it as a scan output. The body
is converted once, with onnx2torch and our converters, into a module that
:class:`OnnxLoop` calls once per iteration, so autograd sees the unrolled recurrence: the
gradient of a weight passed in as a loop-carried value is the sum over steps, as in the
framework that exported it.

Outer values the body reads become extra ``forward`` arguments after ``v_initial`` (the loader
binds float initializers among them to parameters like any node input). When the body reads a
captured float tensor one step per iteration, the module records it in ``sequence_argument`` and
``layout``, so the temporal profiler treats the loop as a recurrent layer over that sequence.
"""

from __future__ import annotations

import inspect

import onnx2torch
import torch
from onnx import GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto, helper
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import fx, nn

from diagnostics.loading.onnx.fx_outputs import return_graph_outputs
from diagnostics.loading.onnx.graph import captured_names
from diagnostics.loading.onnx.ops.registry import converter
from diagnostics.loading.onnx.rewrites import assign_safe_names, constants_as_tensors

# A file can ask for 2^63 iterations, or loop on a condition that never turns false; the probe
# must end. Recurrences over sequences that long are not diagnosed one step at a time anyway.
MAX_ITERATIONS = 100_000


class OnnxLoop(nn.Module, OnnxToTorchModule):
    """``Loop(M, cond, v_initial...)`` with its body converted to a torch module."""

    def __init__(self, body: fx.GraphModule, *, has_trip_count: bool, has_condition: bool,
                 carried: int, scan_outputs: int, sequence_argument: int | None,
                 time_axis: int) -> None:
        """Configure the loop.

        Args:
            body: Called as ``body(iteration, cond, *carried, *captured)``; returns
                ``(cond, *carried, *scan_outputs)``.
            has_trip_count: Whether ``M`` is given (otherwise only ``cond`` stops the loop).
            has_condition: Whether ``cond`` is given.
            carried: Number of loop-carried values.
            scan_outputs: Number of scan outputs.
            sequence_argument: Index in ``forward``'s arguments of the captured sequence the
                body reads one step per iteration, or None.
            time_axis: The axis of that sequence the body indexes by the step.
        """
        super().__init__()
        self.body = body
        self.has_trip_count, self.has_condition = has_trip_count, has_condition
        self.carried, self.scan_outputs = carried, scan_outputs
        self.sequence_argument = sequence_argument
        self.layout = time_axis  # the temporal profiler reads the time axis from ``layout``

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the body until the trip count or the condition stops it.

        Returns the final carried values, then each scan output stacked along a new axis 0.
        """
        args_list = list(args)
        trip = int(args_list.pop(0)) if self.has_trip_count else None
        keep = bool(args_list.pop(0)) if self.has_condition else True
        values = args_list[:self.carried]
        captured = args_list[self.carried:]
        scans: list[list[torch.Tensor]] = []
        iteration = 0
        while keep and (trip is None or iteration < trip):
            if iteration == MAX_ITERATIONS:
                raise RuntimeError(
                    f"Loop runs past {MAX_ITERATIONS} iterations (trip count "
                    f"{'none' if trip is None else trip}); refusing to unroll it further")
            results = self.body(torch.tensor(iteration, dtype=torch.int64),
                                torch.tensor(keep), *values, *captured)
            results = results if isinstance(results, tuple) else (results,)
            keep = bool(results[0])
            values = list(results[1:1 + self.carried])
            step_outputs = results[1 + self.carried:]
            if not scans:
                scans = [[] for _ in step_outputs]
            for stack, value in zip(scans, step_outputs, strict=True):
                stack.append(value)
            iteration += 1
        if iteration == 0 and self.scan_outputs:
            raise RuntimeError("Loop ran no iteration: its scan outputs have no defined shape")
        outputs = (*values, *(torch.stack(stack) for stack in scans))
        return outputs[0] if len(outputs) == 1 else outputs

def _model_opsets() -> dict[str, int]:
    """The opsets of the model onnx2torch is converting, read from its ``convert`` frame.

    Converters are not given the model's opsets; the nearest ``convert`` call on the stack
    (the outer model's, or an enclosing Loop's body) holds them in its local ``opset_import``.
    """
    convert_code = onnx2torch.converter.convert.__code__
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code is convert_code:
            return dict(frame.f_locals["opset_import"])
        frame = frame.f_back
    raise NotImplementedError("Loop converted outside onnx2torch.convert")


def outer_value_info(outer: OnnxGraph, name: str) -> ValueInfoProto | None:
    """What the outer graph knows of a value's type: its value_info, or its graph input's."""
    info = outer.value_info.get(name)
    if info is None:
        info = next((value for value in outer.proto.input if value.name == name), None)
    return info


def subgraph_model(body: GraphProto, captured: list[str], outer: OnnxGraph) -> ModelProto:
    """A subgraph (a Loop body, an If branch) as a model of its own: captured values as extra
    inputs, after its own, and every output computed by a node."""
    graph = GraphProto()
    graph.CopyFrom(body)
    graph.name = graph.name or "loop_body"
    computed = {name for node in graph.node for name in node.output}
    for value in graph.output:  # a pass-through (a carried weight) must be a node's output
        if value.name not in computed:
            renamed = f"{value.name}__loop_out"
            graph.node.append(helper.make_node("Identity", [value.name], [renamed]))
            value.name = renamed
    for name in captured:
        graph.input.append(outer_value_info(outer, name)
                           or helper.make_value_info(name, TypeProto()))
    assign_safe_names(graph)
    constants_as_tensors(graph)
    opsets = [helper.make_opsetid(domain, version) for domain, version in _model_opsets().items()]
    return helper.make_model(graph, opset_imports=opsets)


def _sequence_read(body: GraphProto, captured: list[str]) -> tuple[str | int, int] | None:
    """Which value the body reads one step per iteration, with the axis: ``Gather(value, i)``
    whose index is a loop counter. The value is a captured name, or the position (among the
    loop-carried values) of a carried value the body passes on unchanged — jax2onnx carries the
    scanned sequence that way when it writes ``jax.lax.scan`` as a Loop.

    The counter is the iteration number (body input 0) or a carried value the body increments
    (tf2onnx keeps TensorFlow's own ``while`` counter as a carried input).
    """
    inputs = [value.name for value in body.input]
    counters = {inputs[0]} if inputs else set()
    carried = inputs[2:]
    increments = {node.input[0] for node in body.node
                  if node.op_type == "Add" and len(node.input) == 2 and node.input[0] in carried}
    counters |= increments
    produced = {out: node for node in body.node for out in node.output}
    unchanged: dict[str, int] = {}
    for position, (name, out) in enumerate(zip(carried, body.output[1:], strict=False)):
        source = produced.get(out.name)
        if out.name == name or (source is not None and source.op_type == "Identity"
                                and source.input[0] == name):
            unchanged[name] = position
    for node in body.node:
        if (node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in counters
                and (node.input[0] in captured or node.input[0] in unchanged)):
            axis = next((int(helper.get_attribute_value(a)) for a in node.attribute
                         if a.name == "axis"), 0)
            source = node.input[0]
            return (source if source in captured else unchanged[source]), axis
    return None


@converter("Loop", [1, 11, 13, 16, 19, 21, 23, 24, 25])
def convert_loop(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """A ``Loop`` node as one :class:`OnnxLoop` running its converted body."""
    proto: NodeProto = node.proto
    body = next(a.g for a in proto.attribute if a.name == "body")
    captured = captured_names(proto)
    model = subgraph_model(body, captured, graph)
    module = onnx2torch.convert(model, attach_onnx_mapping=True)
    return_graph_outputs(module, model.graph, unwrap_single=False)

    trip, cond, *initial = node.input_values
    if any(not name for name in initial):
        raise NotImplementedError("Loop with an omitted loop-carried value")
    counters = tuple(name for name in (trip, cond) if name)
    inputs = counters + tuple(initial) + tuple(captured)
    read = _sequence_read(body, captured)
    position = None if read is None else (
        len(counters) + read[0] if isinstance(read[0], int) else inputs.index(read[0]))
    loop = OnnxLoop(module, has_trip_count=bool(trip), has_condition=bool(cond),
                    carried=len(initial), scan_outputs=len(body.output) - 1 - len(initial),
                    sequence_argument=position,
                    time_axis=0 if read is None else read[1])
    return OperationConverterResult(
        torch_module=loop, onnx_mapping=OnnxMapping(inputs=inputs, outputs=node.output_values))
