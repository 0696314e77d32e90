"""Facts about an ONNX graph: inputs, depth of watched layers, vocabulary of index inputs,
activations, which nodes only compute weights. The rewrites the graph needs before onnx2torch
converts it are in :mod:`.rewrites`.

Everything here reads or edits protobuf only; tensors are decoded just for a few small constants
(Clip bounds), after external data has been refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from diagnostics.errors import ModelLoadError
from diagnostics.loading.onnx.checks import FLOAT_TYPES, attribute_value, element_count
from diagnostics.loading.onnx.symbols import INDEX_PASSTHROUGH, symbol_bounds
from diagnostics.model import Activation, InputSpec

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


def input_specs(graph: GraphProto, inferred: GraphProto | None = None) -> tuple[InputSpec, ...]:
    """One :class:`InputSpec` per real graph input, in graph order.

    Args:
        graph: The model's graph.
        inferred: The same graph after shape inference; where given, symbolic axes that a
            table bounds get ``max_sizes`` (see :func:`symbol_bounds`).

    Raises:
        ModelLoadError: an input is not a tensor, has no element type, or has unknown rank.
    """
    vocab = vocab_sizes(graph)
    bounds = symbol_bounds(inferred) if inferred is not None else {}
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
        max_sizes = tuple((axis, bounds[dim]) for axis, dim in enumerate(shape)
                          if isinstance(dim, str) and dim in bounds)
        specs.append(InputSpec(value.name, shape, dtype, vocab.get(value.name), max_sizes))
    return tuple(specs)


def consumers(graph: GraphProto) -> dict[str, list[int]]:
    """Value name -> indices of the nodes reading it, subgraph captures included."""
    users: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in dict.fromkeys((*node.input, *_captured_names(node))):
            if name:
                users[name].append(index)
    return users


def captured_names(node: NodeProto) -> list[str]:
    """Outer values a node's subgraphs (Loop, If, Scan bodies) read by name, in order, once.

    Names defined inside a subgraph (its inputs, initializers, node outputs) are not outer
    values, so only what the body captures from the enclosing graph is listed.
    """
    found: dict[str, None] = {}
    stack: list[tuple[GraphProto, frozenset[str]]] = [
        (g, frozenset()) for attribute in node.attribute
        for g in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)]
    while stack:
        graph, outer_local = stack.pop()
        local = set(outer_local) | {value.name for value in graph.input} | {
            init.name for init in graph.initializer}
        for inner in graph.node:
            for name in inner.input:
                if name and name not in local:
                    found.setdefault(name)
            for attribute in inner.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(
                        attribute.graphs):
                    stack.append((sub, frozenset(local)))
            local.update(inner.output)
    return list(found)


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


# Ops whose output depends on their input's shape only, never on its values.
_SHAPE_READERS = frozenset({"Shape", "Size"})


def weight_only_nodes(graph: GraphProto) -> list[bool]:
    """Per node: whether its values come from initializers and constants alone (weight preparation).

    Exporters prepare weights inside the graph: both PyTorch exporters reorder an LSTM's gates
    with ``Slice``/``Concat`` of ``weight_ih`` (the legacy one wraps them in ``Unsqueeze``); a
    static ``Expand`` tiles a class token. Such nodes see no data, so they are not layers: the
    weights they read belong to the node that meets the data. Shapes are not data (dynamo
    computes the slice bounds from ``Shape`` of a zero state sized by the batch): ``Shape`` and
    ``Size`` of a data tensor give structure, not values. A node with a subgraph (Loop, If, Scan)
    is never weight-only.
    """
    data = {value.name for value in real_inputs(graph)}
    result: list[bool] = []
    for node in graph.node:
        has_subgraph = any(attribute.HasField("g") or attribute.graphs
                           for attribute in node.attribute)
        reads_data = node.op_type not in _SHAPE_READERS and any(
            name in data for name in node.input if name)
        if has_subgraph or reads_data:
            data.update(node.output)
        result.append(not (has_subgraph or reads_data))
    return result


# Ops that hand ids on with their values unchanged (permuted at most).
_ID_PASSTHROUGH = INDEX_PASSTHROUGH | {"Transpose"}


def vocab_sizes(graph: GraphProto) -> dict[str, int]:
    """For inputs used as ``Gather`` indices into an initializer table: the table's row count.

    The input may reach the Gather through Cast/Reshape/Unsqueeze/Squeeze/Flatten/Identity, or a
    Transpose (transformers' XLNet indexes its table with the ids time-major).
    Where one input indexes several tables, the smallest keeps every synthesized id valid.
    """
    tables = {init.name: list(init.dims) for init in graph.initializer}
    users = consumers(graph)
    result: dict[str, int] = {}
    for value in real_inputs(graph):
        frontier, seen = [value.name], {value.name}
        while frontier:
            name = frontier.pop()
            for index in users.get(name, ()):
                node = graph.node[index]
                if node.op_type in _ID_PASSTHROUGH and node.input[0] == name:
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
    users = consumers(graph)
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


# What attention probabilities flow into: the product with the values.
_WEIGHTED_SUMS = frozenset({"MatMul", "Einsum"})
_PASS_THROUGH = frozenset({"Cast", "Dropout", "Identity", "Where"})  # Where: NaN masking


def attention_score_nodes(graph: GraphProto) -> list[bool]:
    """Per node: it reaches a graph output, and only through an attention softmax (a Softmax
    whose probabilities multiply values): an attention's query and key projections.

    At initialization attention is nearly uniform, so their gradient measures how flat the
    softmax is, not how the signal propagates through the stack (README, "Verdict rules").
    """
    users = consumers(graph)
    outputs = {value.name for value in graph.output}
    barrier = [node.op_type == "Softmax" and _weighs_values(graph, users, index)
               for index, node in enumerate(graph.node)]
    reaches, direct = [False] * len(graph.node), [False] * len(graph.node)
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        later = [user for name in node.output for user in users.get(name, ())
                 if user > index and reaches[user]]
        at_output = any(name in outputs for name in node.output)
        reaches[index] = at_output or bool(later)
        direct[index] = not barrier[index] and (at_output or any(direct[u] for u in later))
    return [reach and not free and not wall
            for reach, free, wall in zip(reaches, direct, barrier, strict=True)]


def _weighs_values(graph: GraphProto, users: dict[str, list[int]], index: int) -> bool:
    """Whether node ``index``'s output multiplies values (through casts, dropout, masking)."""
    frontier, seen = [index], {index}
    while frontier:
        for name in graph.node[frontier.pop()].output:
            for user in users.get(name, ()):
                op = graph.node[user].op_type
                if op in _WEIGHTED_SUMS:
                    return True
                if op in _PASS_THROUGH and user not in seen:
                    seen.add(user)
                    frontier.append(user)
    return False


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


def default_opset(model: ModelProto) -> int | None:
    """Opset of the default (ai.onnx) domain, or None when the model imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None
