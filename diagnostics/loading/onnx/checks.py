"""Safety and validity checks an ONNX model passes before anything converts or allocates it.

The order matters and is kept by :func:`diagnostics.loading.onnx.loader.load_onnx`: parse, then the
structural walk (nesting, node count, declared sizes, parameter budget) which only reads the
protobuf, then the external-data references (:mod:`.external_data`), then the operator check,
and only then onnx's checker and shape inference. Nothing here opens a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto
from onnx.defs import ONNX_DOMAIN, SchemaError, get_schema
from onnx2torch.node_converters.registry import get_converter

from diagnostics.errors import (
    ModelLoadError,
    ResourceLimitError,
    UnsupportedOperatorError,
)
from diagnostics.limits import Limits

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)
_MESSAGE_CHARS = 400
# The newest ai.onnx opset the installed onnx defines. onnx's checker accepts any higher number
# (opset 99) and schema lookup falls back to the newest version, which would silently give a
# future op's node today's semantics.
NEWEST_OPSET = onnx.defs.onnx_opset_version()


def one_line(text: object, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` with whitespace collapsed and cut to ``limit`` characters, for error details."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_model(data: bytes, limits: Limits) -> ModelProto:
    """Decode ``data`` into a ModelProto that at least has a graph with nodes.

    Raises:
        ResourceLimitError: ``data`` is larger than ``limits.max_model_bytes``.
        ModelLoadError: empty, not a protobuf, truncated, or no graph / no nodes.
    """
    if len(data) > limits.max_model_bytes:
        raise ResourceLimitError(
            f"model file is {len(data)} bytes, over the limit of {limits.max_model_bytes}",
            limit="max_model_bytes", value=limits.max_model_bytes,
        )
    if not data:
        raise ModelLoadError("model file is empty")
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, RecursionError or others by backend
        raise ModelLoadError(
            f"not an ONNX model (protobuf decoding failed, truncated or corrupt file): "
            f"{one_line(exc, 200)}"
        ) from None
    if not model.HasField("graph"):
        raise ModelLoadError("not an ONNX model: the file holds no graph")
    if not model.graph.node:
        raise ModelLoadError("ONNX graph has no nodes")
    return model


@dataclass(frozen=True)
class Scope:
    """One graph-like body: the main graph, a subgraph attribute, a function or training graph."""

    label: str
    depth: int
    nodes: tuple[NodeProto, ...]
    graph: GraphProto | None


def iter_scopes(model: ModelProto, max_nesting: int) -> Iterator[Scope]:
    """Every graph body in ``model``, breadth-first, refusing nesting deeper than ``max_nesting``.

    Iterative on purpose: a hostile file can nest subgraphs as deep as protobuf allows.

    Raises:
        ResourceLimitError: a subgraph sits deeper than ``max_nesting`` levels.
    """
    stack: list[tuple[str, int, GraphProto]] = [("graph", 0, model.graph)]
    for info in model.training_info:
        stack.append(("training_info.initialization", 0, info.initialization))
        stack.append(("training_info.algorithm", 0, info.algorithm))
    for function in model.functions:
        yield Scope(f"function {function.domain}:{function.name}", 0, tuple(function.node), None)
        stack.extend(_subgraphs(function.node, f"function {function.name}", 1))
    while stack:
        label, depth, graph = stack.pop()
        if depth > max_nesting:
            raise ResourceLimitError(
                f"subgraphs are nested more than {max_nesting} levels deep ({label})",
                limit="max_nesting", value=max_nesting,
            )
        yield Scope(label, depth, tuple(graph.node), graph)
        stack.extend(_subgraphs(graph.node, label, depth + 1))


def _subgraphs(nodes, label: str, depth: int) -> Iterator[tuple[str, int, GraphProto]]:
    for node in nodes:
        for attribute, graph in _bodies(node):
            yield (f"{label} > node {node.name or node.op_type}.{attribute}", depth, graph)


def _bodies(node: NodeProto) -> Iterator[tuple[str, GraphProto]]:
    """(attribute name, graph) for every subgraph ``node`` holds (If branches, Loop/Scan body)."""
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else []
        for graph in [*graphs, *attribute.graphs]:
            yield attribute.name, graph


def _attribute_tensors(node: NodeProto) -> Iterator[tuple[str, TensorProto]]:
    where = f"attribute of node {node.name or node.op_type!r}"
    for attribute in node.attribute:
        tensors = [attribute.t] if attribute.HasField("t") else []
        tensors += list(attribute.tensors)
        sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        sparse += list(attribute.sparse_tensors)
        for tensor in tensors:
            yield f"{where}.{attribute.name}", tensor
        for item in sparse:
            yield f"{where}.{attribute.name}", item.values
            yield f"{where}.{attribute.name} (indices)", item.indices


def iter_tensors(model: ModelProto, max_nesting: int) -> Iterator[tuple[str, TensorProto]]:
    """Yield (where, tensor) for every tensor stored in the model.

    Initializers, sparse initializers, node attributes (Constant ``value``/``sparse_value`` ...)
    in every graph, subgraph and function, and function attribute defaults.
    """
    for function in model.functions:
        for attribute in function.attribute_proto:
            fake = NodeProto(name=f"function {function.name}", attribute=[attribute])
            yield from _attribute_tensors(fake)
    for scope in iter_scopes(model, max_nesting):
        suffix = "" if scope.label == "graph" else f" in {scope.label}"
        if scope.graph is not None:
            for tensor in scope.graph.initializer:
                yield f"initializer{suffix}", tensor
            for item in scope.graph.sparse_initializer:
                yield f"sparse initializer{suffix}", item.values
                yield f"sparse initializer (indices){suffix}", item.indices
        for node in scope.nodes:
            for where, tensor in _attribute_tensors(node):
                yield f"{where}{suffix}", tensor


def element_count(dims) -> int:
    """Product of ``dims`` as a Python int (no overflow); negative dims are a load error."""
    dims = list(dims)
    if any(dim < 0 for dim in dims):
        raise ModelLoadError(f"tensor has a negative dimension: {dims}")
    return math.prod(dims)


def _check_elements(what: str, count: int, limits: Limits) -> None:
    if count > limits.max_tensor_elements:
        raise ResourceLimitError(
            f"{what} has {count} elements, over the limit of {limits.max_tensor_elements}",
            limit="max_tensor_elements", value=limits.max_tensor_elements,
        )


def _declared_count(value: ValueInfoProto) -> int | None:
    tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor_type is None or not tensor_type.HasField("shape"):
        return None
    dims = [dim.dim_value for dim in tensor_type.shape.dim if dim.HasField("dim_value")]
    return element_count(dims)


def check_declared_sizes(model: ModelProto, limits: Limits, *, inferred: bool = False) -> None:
    """Refuse any declared (or, after shape inference, inferred) tensor over the element budget.

    Only known dimensions count: a dynamic dimension is bounded later by the sample inputs.

    Raises:
        ResourceLimitError: naming the tensor.
    """
    kind = "inferred" if inferred else "declared"
    for scope in iter_scopes(model, limits.max_nesting):
        if scope.graph is None:
            continue
        graph = scope.graph
        for value in [*graph.input, *graph.output, *graph.value_info]:
            count = _declared_count(value)
            if count is not None:
                _check_elements(f"{kind} tensor {value.name!r}", count, limits)


def check_budgets(model: ModelProto, limits: Limits, extra_parameters: int = 0) -> None:
    """Node count, nesting, per-tensor elements and total float parameters, before any allocation.

    Args:
        model: The parsed model (external data not read yet: only shapes count).
        limits: The budgets.
        extra_parameters: Float elements the loader will add (copies of deduplicated
            initializers), counted against ``max_parameters`` too.

    Raises:
        ResourceLimitError: the first budget exceeded, with ``limit`` and its value.
    """
    nodes = sum(len(scope.nodes) for scope in iter_scopes(model, limits.max_nesting))
    if nodes > limits.max_nodes:
        raise ResourceLimitError(
            f"model has {nodes} nodes (subgraphs and functions included), over the limit of "
            f"{limits.max_nodes}",
            limit="max_nodes", value=limits.max_nodes,
        )
    parameters = extra_parameters
    for where, tensor in iter_tensors(model, limits.max_nesting):
        count = element_count(tensor.dims)
        _check_elements(f"tensor {tensor.name or '(unnamed)'!r} ({where})", count, limits)
        if where.startswith("initializer") and tensor.data_type in FLOAT_TYPES:
            parameters += count
    if parameters > limits.max_parameters:
        raise ResourceLimitError(
            f"model has {parameters} float weights, over the limit of {limits.max_parameters}",
            limit="max_parameters", value=limits.max_parameters,
        )
    check_declared_sizes(model, limits)


def opset_versions(model: ModelProto) -> dict[str, int]:
    """Imported opset per domain, with ``ai.onnx`` spelled as the default domain ``""``."""
    return {
        ("" if entry.domain == ONNX_DOMAIN or entry.domain == "ai.onnx" else entry.domain):
        entry.version
        for entry in model.opset_import
    }


def check_supported_ops(model: ModelProto) -> None:
    """Every node has an onnx2torch converter (stock or ours) at the model's opset.

    Nodes inside If/Loop/Scan bodies are converted when their container is; they are looked up
    here too, so that an unsupported op in a branch is named as itself (with the node that holds
    it) before any conversion. Our own converters register on import of
    :mod:`diagnostics.loading.onnx.ops`, which the caller has imported.

    Raises:
        ModelLoadError: a node's domain is not imported by the model.
        UnsupportedOperatorError: naming op, domain, opset and node; also for every node of a
            model whose ai.onnx opset is newer than :data:`NEWEST_OPSET`.
    """
    opsets = opset_versions(model)
    for index, node, where in _nodes_and_bodies(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        node_name = node.name or f"{node.op_type}_{index}"
        if domain not in opsets:
            raise ModelLoadError(
                f"node {node_name!r} ({node.op_type}) uses domain {domain or 'ai.onnx'!r}, "
                f"which the model does not import",
                node=node_name,
            )
        if domain == "" and opsets[domain] > NEWEST_OPSET:
            raise UnsupportedOperatorError(
                node.op_type, domain=domain, opset=opsets[domain], node=node_name,
                detail=f"operator {node.op_type} (domain ai.onnx, opset {opsets[domain]}) used by "
                f"node {node_name!r} is not supported: opset {opsets[domain]} is newer than any "
                f"this service knows (up to {NEWEST_OPSET}, onnx {onnx.__version__}); export "
                f"with opset {NEWEST_OPSET} or lower")
        try:
            get_converter(operation_type=node.op_type, version=opsets[domain], domain=domain)
        except NotImplementedError:
            raise UnsupportedOperatorError(
                node.op_type, domain=domain, opset=opsets[domain], node=node_name,
                detail=_unsupported_detail(node.op_type, domain, opsets[domain], node_name)
                + where,
            ) from None


def _nodes_and_bodies(graph: GraphProto) -> Iterator[tuple[int, NodeProto, str]]:
    """(index, node, where) for the top-level nodes, then every subgraph's, where saying which
    node holds the body (`` (in the then_branch of If 'If_3')``). Nesting depth was bounded
    when the model was parsed (:func:`iter_scopes`)."""
    stack: list[tuple[GraphProto, str]] = [(graph, "")]
    while stack:
        body, where = stack.pop(0)
        for index, node in enumerate(body.node):
            yield index, node, where
            holder = node.name or node.op_type
            stack.extend((sub, f" (in the {attribute} of {node.op_type} {holder!r}{where})")
                         for attribute, sub in _bodies(node))


def _unsupported_detail(op_type: str, domain: str, opset: int, node_name: str) -> str:
    """The contract's message plus the op version a converter needs (Constant-19 at opset 20).

    That version is what a converter author looks for.
    """
    try:
        version = get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
        needed = f"; no converter for {op_type}-{version}"
    except SchemaError:
        needed = "; no schema or converter for this custom op"
    return (f"operator {op_type} (domain {domain or 'ai.onnx'}, opset {opset}{needed}) used by "
            f"node {node_name!r} is not supported")


def complete_output_types(model: ModelProto) -> list[str]:
    """Give graph outputs declared without a type or shape the type shape inference finds.

    onnx's checker refuses a graph output without a declared shape although onnxruntime runs
    the model: the declaration is metadata the probe does not need. Inference runs (lenient, on
    a copy) only when some output lacks one.

    Returns:
        The names of the outputs completed.

    Raises:
        ModelLoadError: naming an output whose type inference cannot find either.
    """
    missing = [value for value in model.graph.output if not _declares_shape(value)]
    if not missing:
        return []
    probe = ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.output:
        if not _declares_shape(value):
            value.ClearField("type")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as exc:  # a real error: the checker below gives the user its message
        raise ModelLoadError(f"ONNX shape inference: {one_line(exc)}") from None
    found = {value.name: value for value in (*inferred.graph.value_info, *inferred.graph.output)
             if _declares_shape(value)}
    for value in missing:
        if value.name not in found:
            raise ModelLoadError(
                f"graph output {value.name!r} declares no type or shape and shape inference "
                f"cannot find one", output=value.name)
        value.type.CopyFrom(found[value.name].type)
    return [value.name for value in missing]


def _declares_shape(value: ValueInfoProto) -> bool:
    if value.type.HasField("tensor_type"):
        tensor_type = value.type.tensor_type
        return tensor_type.elem_type != onnx.TensorProto.UNDEFINED and tensor_type.HasField("shape")
    return value.type.WhichOneof("value") is not None  # sequences, maps: checked as declared


def validate_and_infer(model: ModelProto, limits: Limits, notes: list[str] | None = None, *,
                       serialized: bytes | None = None) -> ModelProto:
    """Run onnx's checker, then strict shape inference with data propagation.

    Strict inference with ``check_type`` is what ``check_model(full_check=True)`` runs; calling it
    ourselves adds data propagation (so ConstantOfShape/Expand/Tile outputs get concrete shapes to
    budget) without inferring twice.

    Intermediate ``value_info`` annotations are hints, not part of the computation; exporters
    leave stale ones (jax2onnx annotates NCHW tensors with their NHWC shapes) that onnxruntime
    ignores. When strict inference fails and succeeds without them, they are dropped from
    ``model`` (re-inferred) and the fact is added to ``notes``; a model that still fails
    without them is refused with the original message.

    Both steps run on bytes, and only the checker sees the weights: serializing a large model is
    the costliest part of either (a ResNet-50 takes longer to serialize than to infer), so the
    checker reads ``serialized`` (the file's bytes, when ``model`` is still exactly what they
    decode to) and inference reads a copy without the values of large float initializers
    (:func:`shapes_only`), which no shape depends on.

    Args:
        model: The parsed model.
        limits: The budgets an inferred tensor must fit.
        notes: Where a note goes when stale annotations are dropped.
        serialized: ``model``'s bytes, when the caller has them unchanged; else serialized here.

    Returns:
        A weightless copy of the model with inferred ``value_info``: read its graph's value
        types and small constants, never its large float initializers (their dims are kept,
        their values are not).

    Raises:
        ModelLoadError: with the checker's or inference's message on one line.
        ResourceLimitError: an inferred tensor is over ``max_tensor_elements``.
    """
    try:
        onnx.checker.check_model(model.SerializeToString() if serialized is None else serialized)
    except Exception as exc:  # ValidationError, or C++ errors surfaced as other types
        raise ModelLoadError(f"ONNX checker: {one_line(exc)}") from None
    try:
        inferred = _infer_strict(model)
    except Exception as exc:  # InferenceError, or a C++ error surfaced as RuntimeError
        fallback = _infer_without_annotations(model, notes)
        if fallback is None:
            raise ModelLoadError(f"ONNX shape inference: {one_line(exc)}") from None
        inferred = fallback
    check_declared_sizes(inferred, limits, inferred=True)
    return inferred


def _infer_strict(model: ModelProto) -> ModelProto:
    return onnx.shape_inference.infer_shapes(shapes_only(model), check_type=True,
                                             strict_mode=True, data_prop=True)


def _infer_without_annotations(model: ModelProto, notes: list[str] | None) -> ModelProto | None:
    stale = list(model.graph.value_info)
    if not stale:
        return None
    del model.graph.value_info[:]
    try:
        inferred = _infer_strict(model)
    except Exception:  # not the annotations' fault: restore them, refuse with the first error
        model.graph.value_info.extend(stale)
        return None
    if notes is not None:
        notes.append(
            f"The file's intermediate shape annotations (value_info) contradict its own graph "
            f"(stale ones, e.g. NHWC shapes on NCHW tensors); all {len(stale)} were dropped and "
            f"the shapes re-inferred from the graph, as onnxruntime does.")
    return inferred


# Float initializers above this many elements lose their values in :func:`shapes_only`. Shape
# inference reads the values of only a few float inputs (Resize/Upsample scales, Range bounds),
# all of a handful of elements; integer tensors (shapes, axes, indices) always keep theirs.
_SHAPE_DATA_ELEMENTS = 1024


def shapes_only(model: ModelProto) -> ModelProto:
    """A copy of ``model`` whose large float initializers keep name, type and dims, no values.

    Built field by field, so the weights are never copied.
    """
    light = ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES and math.prod(tensor.dims) > _SHAPE_DATA_ELEMENTS:
            light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type,
                                        dims=tensor.dims)
        else:
            light.graph.initializer.append(tensor)
    return light


def _copy_fields(source, target, skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if descriptor.is_repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def attribute_value(node: NodeProto, name: str):
    """A node attribute's Python value, or None when absent."""
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None

