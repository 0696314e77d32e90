"""Facts about an ONNX graph and the rewrites it needs before onnx2torch converts it.

Facts: display names, inputs, depth of watched layers, vocabulary of index inputs, activations.

Everything here reads or edits protobuf only; tensors are decoded just for a few small constants
(Clip bounds), after external data has been refused.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence

import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from diagnostics.errors import ModelLoadError
from diagnostics.loading.onnx_checks import FLOAT_TYPES, attribute_value, element_count
from diagnostics.model import Activation, InputSpec

# Ops through which an integer input keeps indexing the same table (shape changes only).
INDEX_PASSTHROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})

ACTIVATIONS: dict[str, Activation] = {
    "Relu": Activation.RELU,
    "LeakyRelu": Activation.LEAKY_RELU,
    "PRelu": Activation.PRELU,
    "Elu": Activation.ELU,
    "Selu": Activation.SELU,
    "Celu": Activation.CELU,
    "Gelu": Activation.GELU,
    "Sigmoid": Activation.SIGMOID,
    "Tanh": Activation.TANH,
    "HardSigmoid": Activation.HARDSIGMOID,
    "HardSwish": Activation.HARDSWISH,
    "Softplus": Activation.SOFTPLUS,
    "Softsign": Activation.SOFTSIGN,
    "Mish": Activation.MISH,
    "Softmax": Activation.SOFTMAX,
    "LogSoftmax": Activation.LOG_SOFTMAX,
}
NORMALIZATIONS = frozenset(
    {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"}
)


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


def check_outputs_computed(graph: GraphProto) -> None:
    """Every graph output is produced by a top-level node (onnx2torch requires it).

    Raises:
        ModelLoadError: naming the first output that is an input or a constant.
    """
    produced = {name for node in graph.node for name in node.output}
    for value in graph.output:
        if value.name not in produced:
            raise ModelLoadError(
                f"graph output {value.name!r} is not computed by any node (it is an input or "
                f"a constant); only computed outputs are supported"
            )


def real_inputs(graph: GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs the caller feeds: those that are not also initializers (old-IR defaults)."""
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def input_specs(graph: GraphProto) -> tuple[InputSpec, ...]:
    """One :class:`InputSpec` per real graph input, in graph order.

    Raises:
        ModelLoadError: an input is not a tensor, has no element type, or has unknown rank.
    """
    vocab = vocab_sizes(graph)
    specs = []
    for value in real_inputs(graph):
        if not value.type.HasField("tensor_type"):
            raise ModelLoadError(f"graph input {value.name!r} is not a tensor", input=value.name)
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == TensorProto.UNDEFINED:
            raise ModelLoadError(f"graph input {value.name!r} has no element type",
                                 input=value.name)
        if not tensor_type.HasField("shape"):
            raise ModelLoadError(
                f"graph input {value.name!r} declares no shape (unknown rank)", input=value.name
            )
        shape = tuple(
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
            for dim in tensor_type.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append(InputSpec(value.name, shape, dtype, vocab.get(value.name)))
    return tuple(specs)


def _consumers(graph: GraphProto) -> dict[str, list[int]]:
    users: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in dict.fromkeys((*node.input, *_captured_names(node))):
            if name:
                users[name].append(index)
    return users


def _captured_names(node: NodeProto) -> Iterator[str]:
    """Names a node's subgraphs read (a superset of the outer values they capture)."""
    stack = [g for attribute in node.attribute
             for g in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)]
    while stack:
        graph = stack.pop()
        for inner in graph.node:
            yield from inner.input
            stack.extend(g for attribute in inner.attribute
                         for g in ([attribute.g] if attribute.HasField("g") else [])
                         + list(attribute.graphs))


def vocab_sizes(graph: GraphProto) -> dict[str, int]:
    """For inputs used as ``Gather`` indices into an initializer table: the table's row count.

    The input may reach the Gather through Cast/Reshape/Unsqueeze/Squeeze/Flatten/Identity.
    Where one input indexes several tables, the smallest keeps every synthesized id valid.
    """
    tables = {init.name: list(init.dims) for init in graph.initializer}
    users = _consumers(graph)
    result: dict[str, int] = {}
    for value in real_inputs(graph):
        frontier, seen = [value.name], {value.name}
        while frontier:
            name = frontier.pop()
            for index in users.get(name, ()):
                node = graph.node[index]
                if node.op_type in INDEX_PASSTHROUGH and node.input[0] == name:
                    fresh = [out for out in node.output if out not in seen]
                    seen.update(fresh)
                    frontier.extend(fresh)
                elif (node.op_type == "Gather" and len(node.input) > 1
                      and node.input[1] == name and node.input[0] in tables):
                    dims = tables[node.input[0]]
                    axis = attribute_value(node, "axis") or 0
                    if dims and -len(dims) <= axis < len(dims):
                        rows = dims[axis]
                        result[value.name] = min(rows, result.get(value.name, rows))
    return result


def layer_depths(graph: GraphProto, watched: Sequence[bool]) -> list[int]:
    """Per node: the most watched nodes on any path from it to a graph output (itself excluded).

    A watched node with no watched node after it (e.g. the one producing the output) gets 0.
    Paths that end without reaching a graph output do not count.
    """
    users = _consumers(graph)
    outputs = {value.name for value in graph.output}
    count = len(graph.node)
    depth, reaches = [0] * count, [False] * count
    for index in range(count - 1, -1, -1):
        node = graph.node[index]
        reach = any(name in outputs for name in node.output)
        best = 0
        for name in node.output:
            for user in users.get(name, ()):
                if user > index and reaches[user]:
                    reach = True
                    best = max(best, depth[user] + int(watched[user]))
        depth[index], reaches[index] = best, reach
    return depth


def scalar_constants(graph: GraphProto) -> dict[str, float]:
    """Values of one-element float constants (initializers and Constant nodes), for Clip."""
    found: dict[str, float] = {}
    for init in graph.initializer:
        if init.data_type in FLOAT_TYPES and element_count(init.dims) == 1:
            found[init.name] = float(numpy_helper.to_array(init).reshape(-1)[0])
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        value = attribute_value(node, "value_float")
        tensor = attribute_value(node, "value")
        if (value is None and isinstance(tensor, TensorProto)
                and tensor.data_type in FLOAT_TYPES and element_count(tensor.dims) == 1):
            value = float(numpy_helper.to_array(tensor).reshape(-1)[0])
        if value is not None:
            found[node.output[0]] = float(value)
    return found


def activation_of(node: NodeProto, constants: dict[str, float]) -> Activation | None:
    """The activation family of ``node``, or None when it is not an activation.

    Clip is ReLU6 for bounds (0, 6), ReLU for (0, none), hardtanh otherwise; its bounds come
    from attributes (opset < 11) or constant inputs.
    """
    if node.op_type != "Clip":
        return ACTIVATIONS.get(node.op_type)
    low, high = attribute_value(node, "min"), attribute_value(node, "max")
    if len(node.input) > 1 and node.input[1]:
        low = constants.get(node.input[1])
    if len(node.input) > 2 and node.input[2]:
        high = constants.get(node.input[2])
    if low == 0.0 and high == 6.0:
        return Activation.RELU6
    if low == 0.0 and high is None and not (len(node.input) > 2 and node.input[2]):
        return Activation.RELU
    return Activation.HARDTANH


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


def default_opset(model: ModelProto) -> int | None:
    """Opset of the default (ai.onnx) domain, or None when the model imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None
