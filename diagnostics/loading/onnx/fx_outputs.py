"""Make a converted fx module return exactly its ONNX graph's outputs, in order."""

from __future__ import annotations

import operator

from onnx import GraphProto
from torch import fx


def return_graph_outputs(module: fx.GraphModule, graph: GraphProto, *,
                         unwrap_single: bool) -> None:
    """Rebuild ``module``'s output from ``graph.output``, one value per graph output.

    onnx2torch returns each producing node's whole output once (a tuple for multi-output nodes,
    deduplicated by node), which loses order and selection. Every graph output must be produced
    by a node of ``graph`` (the loader checks it first).

    Args:
        unwrap_single: Return a lone output as itself rather than a 1-tuple (the model's
            forward); a Loop body always returns a tuple.
    """
    fx_graph = module.graph
    calls = {n.target: n for n in fx_graph.nodes if n.op == "call_module"}
    producers = {out: (node, i) for node in graph.node for i, out in enumerate(node.output)}
    old_output = next(n for n in fx_graph.nodes if n.op == "output")
    values = []
    with fx_graph.inserting_before(old_output):
        for value in graph.output:
            node, index = producers[value.name]
            call = calls[node.name]
            if len(node.output) > 1:
                call = fx_graph.call_function(operator.getitem, (call, index))
            values.append(call)
    fx_graph.erase_node(old_output)
    fx_graph.output(values[0] if unwrap_single and len(values) == 1 else tuple(values))
    module.recompile()
