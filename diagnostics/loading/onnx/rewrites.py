"""Rewrites an ONNX graph needs before onnx2torch converts it.

Safe node names (onnx2torch makes submodule paths of them; the user's names are kept for the
report), ``Identity(initializer)`` copies tied to their source or made real initializers, the
default domain spelled one way, convolution biases built as expanded zeros dropped, and
``Constant`` values given as lists written as tensors.
Everything here edits protobuf only.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from diagnostics.loading.onnx.checks import FLOAT_TYPES, element_count


def display_names(graph: GraphProto) -> list[str]:
    """Node names as the user sees them in Netron, one per node, all distinct.

    Unnamed nodes become ``{op_type}_{index}`` (index in the file's node list); a repeated name
    gets ``_{index}`` appended to its later uses.
    """
    names: list[str] = []
    used: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in used:
            name = f"{name}_{index}"
        used.add(name)
        names.append(name)
    return names


def assign_safe_names(graph: GraphProto) -> dict[str, str]:
    """Rename every top-level node to a torch-safe unique module name.

    onnx2torch names submodules after nodes (dots become slashes) and keys its value table by
    the same names, so a node name equal to a value name would miswire the graph; ``n{index}_{op}``
    names checked against every value name avoid both problems.

    Returns:
        Safe name -> display name (see :func:`display_names`).
    """
    shown = display_names(graph)
    values = {"initializers"} | {init.name for init in graph.initializer}
    values |= {value.name for value in graph.input} | {value.name for value in graph.output}
    values |= {name for node in graph.node for name in (*node.input, *node.output)}
    prefix = "n"
    while True:
        safe = [
            f"{prefix}{index}_{re.sub(r'[^0-9A-Za-z_]', '_', node.op_type)}"
            for index, node in enumerate(graph.node)
        ]
        if values.isdisjoint(safe):
            break
        prefix = "_" + prefix
    for node, name in zip(graph.node, safe, strict=True):
        node.name = name
    return dict(zip(safe, shown, strict=True))


def identity_initializer_sources(graph: GraphProto) -> dict[str, str]:
    """Map outputs of top-level ``Identity(initializer)`` nodes to the initializer's name.

    Chains of such nodes resolve to the initializer at their start.
    """
    initializers = {init.name for init in graph.initializer}
    sources: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input:
            source = sources.get(node.input[0], node.input[0])
            if source in initializers:
                sources[node.output[0]] = source
    return sources


# Initializer names the exporters invent for folded constants: legacy ``onnx::MatMul_40``,
# dynamo ``val_12``.
GENERATED_NAME = re.compile(r"^(onnx::|val_\d+$)")


def tie_identity_initializers(graph: GraphProto) -> dict[str, list[str]]:
    """Make ``Identity(initializer)`` copies of non-constant tensors uses of the initializer itself.

    Exporters that deduplicate initializers by value (optimum's ALBERT, whose layers share one
    set of weights; tied embeddings) store one tensor and emit Identity nodes named after the
    other uses. Random, non-constant values are not equal by coincidence: the copies are one
    weight, so every use reads the stored tensor and its gradient is the sum over the uses —
    when the copy's name is one the exporter generated (``onnx::MatMul_466``: a folded copy of
    the shared weight). A copy that carries a name of its own (``encoder.layers.1.linear1.
    weight``) was a distinct parameter of the source model that merely starts equal:
    ``nn.TransformerEncoder`` deep-copies its layer, so its layers are equal at initialization
    and untied; it stays its own parameter.
    Constant-valued tensors (BatchNorm's ones and zeros, zero biases) are equal only because
    they were initialized alike; :func:`materialize_identity_initializers` keeps them apart.
    Identity nodes whose output is a graph output are kept.

    Returns:
        Stored initializer -> the copy names now reading it, in graph order.
    """
    sources = identity_initializer_sources(graph)
    outputs = {value.name for value in graph.output}
    by_name = {init.name: init for init in graph.initializer}
    constant: dict[str, bool] = {}
    aliases: dict[str, str] = {}
    for node in graph.node:
        target = node.output[0] if node.op_type == "Identity" and node.output else None
        if target not in sources or target in outputs or target in by_name:
            continue
        source = sources[target]
        if by_name[source].data_type not in FLOAT_TYPES:
            continue
        if source not in constant:
            constant[source] = _constant_valued(by_name[source])
        if not constant[source] and GENERATED_NAME.match(target):
            aliases[target] = source
    if not aliases:
        return {}
    kept = [node for node in graph.node
            if not (node.op_type == "Identity" and node.output and node.output[0] in aliases)]
    del graph.node[:]
    graph.node.extend(kept)
    _rename_uses(graph, aliases)
    tied: dict[str, list[str]] = {}
    for target, source in aliases.items():
        tied.setdefault(source, []).append(target)
    return tied


def _constant_valued(tensor: TensorProto) -> bool:
    """Whether every element is the same (one element counts as constant: nothing to tell)."""
    if element_count(tensor.dims) <= 1:
        return True
    if tensor.data_location == TensorProto.EXTERNAL:
        return True  # values not in the proto: never read here; kept separate, as before
    if tensor.raw_data:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        values = np.frombuffer(tensor.raw_data, dtype=dtype)  # no copy of the weight
    else:
        values = numpy_helper.to_array(tensor).reshape(-1)
    return bool((values == values[0]).all()) if values.size else True


def _rename_uses(graph: GraphProto, names: dict[str, str]) -> None:
    """Rewrite node inputs (subgraphs' too: they may read outer values) through ``names``."""
    stack = [graph]
    while stack:
        current = stack.pop()
        for node in current.node:
            for index, name in enumerate(node.input):
                if name in names:
                    node.input[index] = names[name]
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def materialize_identity_initializers(graph: GraphProto) -> list[str]:
    """Turn each ``Identity(initializer)`` node into an initializer of its own, named by its output.

    The legacy exporter deduplicates initializers with *equal values* (freshly initialized
    BatchNorm weights, zero biases) by keeping one and emitting Identity nodes named after the
    others; tied weights (one Parameter used twice) are shared directly instead. So each Identity
    output is a distinct weight of the original model, named as in its state_dict, and becomes a
    separate parameter. This also fixes onnx2torch's KeyError on Conv weights behind Identity.
    Identity nodes whose output is a graph output are kept.

    Returns:
        The names of the new initializers.
    """
    sources = identity_initializer_sources(graph)
    outputs = {value.name for value in graph.output}
    by_name = {init.name: init for init in graph.initializer}
    created: list[str] = []
    kept: list[NodeProto] = []
    for node in graph.node:
        target = node.output[0] if node.op_type == "Identity" and node.output else None
        if target in sources and target not in outputs and target not in by_name:
            copy = TensorProto()
            copy.CopyFrom(by_name[sources[target]])
            copy.name = target
            graph.initializer.append(copy)
            by_name[target] = copy
            created.append(target)
        else:
            kept.append(node)
    if created:
        del graph.node[:]
        graph.node.extend(kept)
    return created


def identity_copy_elements(graph: GraphProto) -> int:
    """Float elements that :func:`materialize_identity_initializers` will add."""
    sizes = {init.name: element_count(init.dims) for init in graph.initializer
             if init.data_type in FLOAT_TYPES}
    return sum(sizes.get(source, 0) for source in identity_initializer_sources(graph).values())


def normalize_default_domain(model: ModelProto) -> None:
    """Spell the default domain ``""`` in opset imports and top-level nodes.

    ``ai.onnx`` is a legal spelling, but onnx2torch looks opsets up by the node's domain
    string, so the two spellings must agree.
    """
    for entry in model.opset_import:
        if entry.domain == "ai.onnx":
            entry.domain = ""
    for node in model.graph.node:
        if node.domain == "ai.onnx":
            node.domain = ""


_CONVOLUTIONS = frozenset({"Conv", "ConvTranspose"})
_CASTS = frozenset({"Cast", "CastLike", "Identity"})


def drop_zero_conv_biases(graph: GraphProto) -> int:
    """Drop a convolution's bias input that is a constant zero expanded to a shape.

    PyTorch's dynamo exporter with ``optimize=False`` (what GradDoctor's folded-BatchNorm advice
    asks for) writes the absent bias of a ``bias=False`` convolution as
    ``Expand(CastLike(0, x), shape)``; for 3-D convolutions it builds that shape as
    ``[C_out, 2]``, and the file fails in every runtime (onnx's reference evaluator included).
    A zero bias is no bias, so dropping it repairs that file and changes nothing in any other.

    Returns:
        How many biases were dropped.
    """
    producers = {out: node for node in graph.node for out in node.output if out}
    zeros = _zero_constants(graph)
    dropped = 0
    for node in graph.node:
        if node.op_type not in _CONVOLUTIONS or len(node.input) < 3 or not node.input[2]:
            continue
        bias = producers.get(node.input[2])
        if bias is None or bias.op_type != "Expand":
            continue
        source = bias.input[0]
        while source in producers and producers[source].op_type in _CASTS:
            source = producers[source].input[0]
        if source in zeros:
            del node.input[2]
            dropped += 1
    return dropped


def _zero_constants(graph: GraphProto) -> set[str]:
    found = {init.name for init in graph.initializer
             if element_count(init.dims) == 1 and init.data_location != TensorProto.EXTERNAL
             and not numpy_helper.to_array(init).any()}
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attribute in node.attribute:
            if attribute.name == "value" and element_count(attribute.t.dims) == 1 \
                    and not numpy_helper.to_array(attribute.t).any():
                found.add(node.output[0])
            elif attribute.name in ("value_float", "value_int") and \
                    not (attribute.f if attribute.name == "value_float" else attribute.i):
                found.add(node.output[0])
    return found


_LIST_CONSTANTS = {"value_ints": TensorProto.INT64, "value_int": TensorProto.INT64,
                   "value_floats": TensorProto.FLOAT, "value_float": TensorProto.FLOAT}


def constants_as_tensors(graph: GraphProto) -> int:
    """Rewrite ``Constant(value_ints=[...])`` (and value_int/floats/float) as ``Constant(value=
    tensor)``: the same value, in the one form every onnx2torch converter reads.

    onnx2torch hands a converter the attribute's Python list, and e.g. its Unsqueeze calls
    ``.tolist()`` on it: dynamo exports with ``optimize=False`` write axes this way (torchvision
    RAFT's failed to convert).

    Returns:
        How many constants were rewritten.
    """
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        dtype = _LIST_CONSTANTS.get(attribute.name)
        if dtype is None:
            continue
        scalar = attribute.name in ("value_int", "value_float")
        values = [attribute.i if dtype == TensorProto.INT64 else attribute.f] if scalar \
            else list(attribute.ints if dtype == TensorProto.INT64 else attribute.floats)
        tensor = onnx.helper.make_tensor(node.output[0], dtype, [] if scalar else [len(values)],
                                         values)
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))
        rewritten += 1
    return rewritten

