"""Keep only the graph outputs a probe loss can use: float tensors.

Classic-ML exporters end a differentiable network with ops that turn its float output into
labels, maps and sequences (skl2onnx's ``ArgMax`` -> ``ArrayFeatureExtractor`` label and
``ZipMap`` list of ``{class: probability}`` maps, in the ``ai.onnx.ml`` domain). No gradient
flows into a label or a map, and those ops have no torch counterpart, so refusing the model for
them helps nobody. Such outputs are left out: their nodes are removed (when no other output
needs them) and, when that leaves no float output at all, the float tensors that fed them (the
class probabilities) become the outputs. The caller reports what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import GraphProto, ModelProto, ValueInfoProto
from onnx2torch.node_converters.registry import get_converter

from diagnostics.errors import ModelLoadError
from diagnostics.loading.onnx.checks import FLOAT_TYPES, one_line, opset_versions


@dataclass(frozen=True)
class PrunedOutputs:
    """What :func:`keep_float_outputs` changed.

    Attributes:
        dropped: Names of the graph outputs left out (not float tensors).
        promoted: Float tensors that fed them and became outputs (none where float outputs
            remained).
        removed_ops: Op types of the nodes removed, each once, in graph order.
    """

    dropped: tuple[str, ...] = ()
    promoted: tuple[str, ...] = ()
    removed_ops: tuple[str, ...] = ()

    def note(self) -> str | None:
        """One sentence for the report's notes, or None when nothing changed."""
        if not self.dropped:
            return None
        text = (f"Outputs that are not float tensors were left out of the loss (no gradient "
                f"flows into labels, maps or sequences): {', '.join(map(repr, self.dropped))}")
        if self.removed_ops:
            text += f", with the nodes computing only them ({', '.join(self.removed_ops)})"
        if self.promoted:
            text += (f"; the float tensors that fed them are the outputs the loss uses: "
                     f"{', '.join(map(repr, self.promoted))}")
        return text + "."


def is_float_tensor(value: ValueInfoProto) -> bool:
    """Whether a declared value is a tensor of a floating-point type."""
    return (value.type.HasField("tensor_type")
            and value.type.tensor_type.elem_type in FLOAT_TYPES)


def keep_float_outputs(model: ModelProto) -> PrunedOutputs:
    """Drop the non-float outputs that need an op without a converter, and the nodes only they need.

    Non-float outputs we can compute (TopK's indices, a Dropout mask) stay: the probe's loss
    already ignores them. Those behind an op no torch module exists for (``ZipMap``,
    ``ArrayFeatureExtractor``) are left out instead of refusing the model. Where no float
    output remains, the float tensors computed by a node on the way to the dropped outputs,
    nearest to them, become outputs too (skl2onnx's probabilities before ``ZipMap`` and
    ``ArgMax``). Edits ``model`` in place.

    Returns:
        What changed: nothing for a model whose outputs are all float tensors, or where no
        output is one and no node computes a float tensor on the way to them (a single
        integer op, a comparison: the model is left as it is).

    Raises:
        ModelLoadError: shape inference fails while looking for the float sources.
    """
    graph = model.graph
    blocked = _needs_unconvertible(model)
    dropped = [value for value in graph.output
               if not is_float_tensor(value) and value.name in blocked]
    if not dropped:
        return PrunedOutputs()
    kept = [value for value in graph.output if value not in dropped]
    promoted: list[ValueInfoProto] = []
    if not any(is_float_tensor(value) for value in kept):
        promoted = _float_sources(model, [value.name for value in dropped])
        if not promoted:
            return PrunedOutputs()  # no float computation to probe: left to the op check
    del graph.output[:]
    graph.output.extend([*kept, *promoted])
    removed = _remove_dead_nodes(graph)
    return PrunedOutputs(tuple(value.name for value in dropped),
                         tuple(value.name for value in promoted),
                         tuple(dict.fromkeys(removed)))


def _needs_unconvertible(model: ModelProto) -> set[str]:
    """Values whose computation needs a top-level node without a converter (``ZipMap``)."""
    opsets = opset_versions(model)
    blocked: set[str] = set()
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            get_converter(operation_type=node.op_type, version=opsets.get(domain, 1),
                          domain=domain)
            missing = False
        except NotImplementedError:
            missing = True
        if missing or any(name in blocked for name in node.input):
            blocked.update(node.output)
    return blocked


def _float_sources(model: ModelProto, names: list[str]) -> list[ValueInfoProto]:
    """Float tensors computed by nodes, nearest to ``names`` walking back through producers."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # the checker later gives the user the full story
        raise ModelLoadError(f"ONNX shape inference: {one_line(exc)}") from None
    types = {value.name: value for value in (*inferred.graph.value_info,
                                             *inferred.graph.output)}
    producers = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, ValueInfoProto] = {}
    stack, seen = list(names), set(names)
    while stack:
        node = producers.get(stack.pop())
        for name in node.input if node is not None else ():
            if not name or name in seen or name not in producers:
                continue  # graph inputs and initializers are not results of the model
            seen.add(name)
            value = types.get(name)
            if value is not None and is_float_tensor(value):
                found[name] = value
            else:
                stack.append(name)
    order = {out: index for index, node in enumerate(model.graph.node) for out in node.output}
    return [found[name] for name in sorted(found, key=order.__getitem__)]


def _remove_dead_nodes(graph: GraphProto) -> list[str]:
    """Remove nodes no graph output depends on; returns their op types in graph order."""
    needed = {value.name for value in graph.output}
    live = [False] * len(graph.node)
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        if any(name in needed for name in node.output):
            live[index] = True
            needed.update(name for name in node.input if name)
            needed.update(_subgraph_reads(node))
    removed = [node.op_type for node, alive in zip(graph.node, live, strict=True) if not alive]
    if removed:
        kept = [node for node, alive in zip(graph.node, live, strict=True) if alive]
        del graph.node[:]
        graph.node.extend(kept)
    return removed


def _subgraph_reads(node) -> set[str]:
    reads: set[str] = set()
    stack = [g for attribute in node.attribute
             for g in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)]
    while stack:
        graph = stack.pop()
        for inner in graph.node:
            reads.update(inner.input)
            stack.extend(g for attribute in inner.attribute
                         for g in ([attribute.g] if attribute.HasField("g") else [])
                         + list(attribute.graphs))
    return reads
