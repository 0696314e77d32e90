"""Facts about an ONNX graph and the rewrites it needs before onnx2torch converts it.

Facts: display names, inputs, depth of watched layers, vocabulary of index inputs, activations.

Everything here reads or edits protobuf only; tensors are decoded just for a few small constants
(Clip bounds), after external data has been refused.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TypeGuard

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from diagnostics.errors import ModelLoadError
from diagnostics.loading.onnx.checks import FLOAT_TYPES, attribute_value, element_count
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


# Ops that hand a small integer vector on with its values in order (shape arithmetic).
_VECTOR_PASSTHROUGH = frozenset({"Cast", "CastLike", "Identity", "Reshape", "Squeeze",
                                 "Unsqueeze", "Flatten"})
# Ops through which position indices reach a table with their values unchanged.
_POSITION_PASSTHROUGH = INDEX_PASSTHROUGH | {"CastLike", "Expand"}
_SMALL = 16  # constants decoded for shape arithmetic: Range bounds, Gather/Slice indices
_TO_THE_END = 2**62  # Slice ends at or above this take everything (exporters write INT64_MAX)

# An element of a vector symbol_bounds follows: a size, a symbolic axis, an unknown size (None),
# or a small constant, which may be a float (see _small_constants).
Dim = int | float | str | None


def symbol_bounds(graph: GraphProto) -> dict[str, int]:  # noqa: C901
    """The largest size a symbolic dimension can take where a position table bounds it.

    ``graph`` must carry inferred shapes (``value_info``), so a ``Shape`` node's input names its
    symbolic axes. Sound patterns only, those both PyTorch exporters emit for position
    embeddings (BERT's ``position_ids`` buffer, GPT-2's ``arange``):

    * ``Range(0, d, 1)`` with ``d`` the size of symbolic axis ``s``, reaching ``Gather``'s
      indices unchanged in value (through Cast/Reshape/Unsqueeze/Expand ...): ids ``0..d-1``
      must be rows of the table, so ``s`` ≤ the table's size along the Gather axis;
    * ``Slice(C, 0, d)`` of a constant ``C`` (a position-id buffer) along one axis, reaching
      ``Gather``'s indices: a longer axis would be cut to ``C``'s length and no longer match
      its input, so ``s`` ≤ that length.

    Returns:
        Symbol -> bound (the smallest where several tables bound it).
    """
    shapes = _static_or_symbolic_shapes(graph)
    constants = _small_constants(graph)
    vectors: dict[str, tuple[Dim, ...]] = dict(constants)  # known values: numbers and symbols
    arrays = {init.name: tuple(init.dims) for init in graph.initializer}
    arrays.update(_constant_node_dims(graph))
    tables = {init.name: tuple(init.dims) for init in graph.initializer
              if init.data_type in FLOAT_TYPES}
    positions: dict[str, tuple[str, int | None]] = {}  # value -> (symbol, bound from a Slice)
    bounds: dict[str, int] = {}
    for node in graph.node:
        inputs, op = list(node.input), node.op_type
        if not node.output or not inputs:
            continue
        out = node.output[0]
        if op == "Shape" and inputs[0] in shapes:
            start, end = attribute_value(node, "start"), attribute_value(node, "end")
            vectors[out] = shapes[inputs[0]][start or 0:end]
        elif op in _VECTOR_PASSTHROUGH and inputs[0] in vectors:
            vectors[out] = vectors[inputs[0]]
        elif op == "Concat" and all(name in vectors for name in inputs):
            vectors[out] = tuple(dim for name in inputs for dim in vectors[name])
        elif op == "Gather" and inputs[0] in vectors and _ints(picks := vectors.get(inputs[1])):
            vector = vectors[inputs[0]]
            if not attribute_value(node, "axis") and all(-len(vector) <= i < len(vector)
                                                         for i in picks):
                vectors[out] = tuple(vector[i] for i in picks)
        elif op == "Range" and len(inputs) == 3 and vectors.get(inputs[0]) == (0,) \
                and vectors.get(inputs[2]) == (1,) and (limit := _symbol(vectors.get(inputs[1]))):
            positions[out] = (limit, None)
        elif op == "Slice" and inputs[0] in positions:
            if _whole_slice(inputs, vectors, positions[inputs[0]][0]):
                positions[out] = positions[inputs[0]]
        elif op == "Slice" and (part := _vector_slice(inputs, vectors)) is not None:
            vectors[out] = part
        elif op == "Slice" and inputs[0] in arrays:
            found = _prefix_slice(inputs, vectors, arrays[inputs[0]])
            if found is not None:
                positions[out] = found
        elif op in _POSITION_PASSTHROUGH and inputs[0] in positions:
            positions[out] = positions[inputs[0]]
        elif op == "Add" and len(inputs) == 2 and any(
                name in positions and _zeros(vectors.get(other))
                for name, other in (inputs, inputs[::-1])):
            # + past length 0: GPT-2's arange(past, past + d) without a cache
            positions[out] = positions[inputs[0] if inputs[0] in positions else inputs[1]]
        elif (op == "Gather" and len(inputs) > 1 and inputs[1] in positions
              and inputs[0] in tables):
            symbol, sliced = positions[inputs[1]]
            dims, axis = tables[inputs[0]], attribute_value(node, "axis") or 0
            bound = sliced if sliced is not None else (
                dims[axis] if -len(dims) <= axis < len(dims) else None)
            if bound:
                bounds[symbol] = min(bound, bounds.get(symbol, bound))
    return bounds


def _symbol(vector: tuple[Dim, ...] | None) -> str | None:
    return vector[0] if vector and len(vector) == 1 and isinstance(vector[0], str) else None


def _zeros(vector: tuple[Dim, ...] | None) -> bool:
    return vector is not None and len(vector) > 0 and all(dim == 0 for dim in vector)


def _ints(vector: tuple[Dim, ...] | None) -> TypeGuard[tuple[int, ...]]:
    return vector is not None and all(isinstance(dim, int) for dim in vector)


def _slice_arguments(inputs: list[str], vectors: dict[str, tuple[Dim, ...]]):
    """(starts, ends, axes, steps) of a Slice-10+ node, or None when any is not known."""
    if len(inputs) < 3:
        return None
    starts, ends = vectors.get(inputs[1]), vectors.get(inputs[2])
    axes = vectors.get(inputs[3]) if len(inputs) > 3 and inputs[3] else None
    steps = vectors.get(inputs[4]) if len(inputs) > 4 and inputs[4] else None
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    if (len(inputs) > 3 and inputs[3] and axes is None) or (
            len(inputs) > 4 and inputs[4] and steps is None):
        return None
    axes = axes if axes is not None else tuple(range(len(starts)))
    steps = steps if steps is not None else (1,) * len(starts)
    return starts, ends, axes, steps


def _vector_slice(inputs: list[str],
                  vectors: dict[str, tuple[Dim, ...]]) -> tuple[Dim, ...] | None:
    """``Slice`` of a known 1-D vector (a shape) with constant bounds, or None."""
    arguments = _slice_arguments(inputs, vectors) if inputs[0] in vectors else None
    if arguments is None or arguments[2:] != ((0,), (1,)) or not _ints(arguments[0] + arguments[1]):
        return None
    return vectors[inputs[0]][arguments[0][0]:arguments[1][0]]


def _whole_slice(inputs: list[str], vectors: dict[str, tuple[Dim, ...]], symbol: str) -> bool:
    """A Slice of ``Range(0, symbol)`` that keeps every element (values unchanged)."""
    arguments = _slice_arguments(inputs, vectors)
    if arguments is None:
        return False
    starts, ends, _, steps = arguments
    return all(start == 0 and step == 1 and (end == symbol or (isinstance(end, int)
                                                               and end >= _TO_THE_END))
               for start, end, step in zip(starts, ends, steps, strict=True))


def _prefix_slice(inputs: list[str], vectors: dict[str, tuple[Dim, ...]],
                  dims: tuple[int, ...]) -> tuple[str, int] | None:
    """(symbol, length of C) for ``Slice(C, 0, symbol)`` on one axis of a constant C."""
    arguments = _slice_arguments(inputs, vectors)
    if arguments is None:
        return None
    starts, ends, axes, steps = arguments
    cut = [(end, axis) for start, end, axis, step in zip(starts, ends, axes, steps, strict=True)
           if start == 0 and step == 1 and isinstance(end, str)
           and isinstance(axis, int) and -len(dims) <= axis < len(dims)]
    if len(cut) != 1 or len(starts) != 1:
        return None
    (symbol, axis), = cut
    return symbol, dims[axis]


def _static_or_symbolic_shapes(graph: GraphProto) -> dict[str, tuple[Dim, ...]]:
    shapes: dict[str, tuple[Dim, ...]] = {
        init.name: tuple(int(dim) for dim in init.dims) for init in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                for dim in tensor_type.shape.dim)
    return shapes


def _small_constants(graph: GraphProto) -> dict[str, tuple[int | float, ...]]:
    """Values of numeric initializers and Constant nodes with at most ``_SMALL`` elements.

    Floats stay floats (the dynamo exporter writes ``Range``'s 0 and 1 as floats cast to the
    limit's type), so only integer values ever index a vector.
    """
    found: dict[str, tuple[int | float, ...]] = {}
    tensors = [(init.name, init) for init in graph.initializer]
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            tensor = attribute_value(node, "value")
            if isinstance(tensor, TensorProto):
                tensors.append((node.output[0], tensor))
            for key in ("value_int", "value_ints"):
                value = attribute_value(node, key)
                if value is not None:
                    found[node.output[0]] = tuple(int(v) for v in np.atleast_1d(value))
    for name, tensor in tensors:
        numeric = tensor.data_type in _INTEGER_TYPES or tensor.data_type in FLOAT_TYPES
        if (numeric and element_count(tensor.dims) <= _SMALL
                and tensor.data_location != TensorProto.EXTERNAL):
            found[name] = tuple(v.item() for v in numpy_helper.to_array(tensor).reshape(-1))
    return found


def _constant_node_dims(graph: GraphProto) -> dict[str, tuple[int, ...]]:
    dims = {}
    for node in graph.node:
        tensor = attribute_value(node, "value") if node.op_type == "Constant" else None
        if isinstance(tensor, TensorProto) and node.output:
            dims[node.output[0]] = tuple(tensor.dims)
    return dims


_INTEGER_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.INT16,
                            TensorProto.INT8, TensorProto.UINT8})


def _consumers(graph: GraphProto) -> dict[str, list[int]]:
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
