"""Upper bounds for the symbolic dimensions of a graph's inputs, read from the graph itself.

A dynamic input axis (``sequence``) that ends up indexing a table (position embeddings sliced to
``[:sequence]``, a Range over it gathered from a table) cannot exceed that table's size; the
sample inputs must respect it, or the probe indexes out of range. :func:`symbol_bounds`
follows small integer vectors (Shape, Gather, Slice, Concat, Range, ...) from each symbol to the
tables they index and returns the tightest bound found.
"""

from __future__ import annotations

from typing import TypeGuard

import numpy as np
from onnx import GraphProto, TensorProto, numpy_helper

from diagnostics.loading.onnx.checks import FLOAT_TYPES, attribute_value, element_count

# Ops through which an integer input keeps indexing the same table (shape changes only).
INDEX_PASSTHROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})

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
