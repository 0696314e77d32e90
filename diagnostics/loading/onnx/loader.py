"""ONNX bytes -> checked model -> torch.fx GraphModule (onnx2torch) with names the user knows.

The pipeline, in order (each step only after the previous one passed):

1. parse; refuse anything over the size/work budgets (:mod:`.checks`), then check every
   external-data reference against the data folder (:mod:`.external_data`), before any onnx
   function that allocates tensors or follows paths;
2. every node has a converter at the model's opset (stock onnx2torch or ours in
   :mod:`diagnostics.loading.onnx.ops`);
3. onnx's checker and strict shape inference;
4. rewrite for onnx2torch (:mod:`.graph`): safe node names, ``Identity(initializer)`` made
   initializers of their own;
5. convert, then bind every float weight to one trainable parameter named after its initializer
   (:mod:`.params`), return outputs in graph order, switch to eval mode;
6. describe the watched layers (parametric, activation, normalization), inputs (with the table
   each token input indexes and the bound a position table puts on a sequence axis) and
   provenance.
"""

from __future__ import annotations

import contextvars
import hashlib
import types
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import onnx2torch
import torch
from onnx import GraphProto, ModelProto, TensorProto
from torch import fx, nn

import diagnostics.loading.onnx.ops  # noqa: F401  (registers our converters with onnx2torch)
from diagnostics.errors import ModelLoadError, UnsupportedOperatorError
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.loading.onnx.checks import (
    check_budgets,
    check_supported_ops,
    complete_output_types,
    one_line,
    opset_versions,
    parse_model,
    validate_and_infer,
)
from diagnostics.loading.onnx.external_data import prepare_external_data
from diagnostics.loading.onnx.folding import FOLDING_ADVICE, folded_batchnorm_nodes
from diagnostics.loading.onnx.fx_outputs import return_graph_outputs
from diagnostics.loading.onnx.graph import (
    NORMALIZATIONS,
    activation_of,
    attention_score_nodes,
    captured_names,
    check_outputs_computed,
    default_opset,
    input_specs,
    layer_depths,
    real_inputs,
    scalar_constants,
    weight_only_nodes,
)
from diagnostics.loading.onnx.ops.recurrent import check_state_widths
from diagnostics.loading.onnx.outputs import keep_float_outputs
from diagnostics.loading.onnx.params import BoundParameters, bind_parameters
from diagnostics.loading.onnx.rewrites import (
    GENERATED_NAME,
    assign_safe_names,
    constants_as_tensors,
    drop_zero_conv_biases,
    identity_copy_elements,
    materialize_identity_initializers,
    normalize_default_domain,
    tie_identity_initializers,
)
from diagnostics.loading.onnx.unrolled import find_unrolled_recurrence
from diagnostics.model import LayerInfo, LayerKind, LoadedModel, SourceInfo, UnrolledSequence

# Ops that hand a weight on unchanged in values (layout or dtype only): the weight is reported
# on the node that consumes their output (the MatMul after ``Transpose(W)``), not on them.
_WEIGHT_VIEWS = frozenset(
    {"Identity", "Cast", "CastLike", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}
)


def load_onnx(data: bytes, *, name: str | None = None, limits: Limits = DEFAULT_LIMITS,
              data_dir: str | Path | None = None) -> LoadedModel:
    """Load an ONNX model into a probe-ready torch module.

    Args:
        data: The ``.onnx`` file's bytes.
        name: Display name for the report (e.g. the file name); defaults to the graph's name.
        limits: Size and work budgets checked before anything is allocated.
        data_dir: The folder that tensors stored as external data (``model.onnx.data``) are
            read from, under the rules of :mod:`.external_data`; None refuses external data.

    Returns:
        A :class:`LoadedModel` in eval mode: ``module(*inputs)`` takes tensors in ``inputs``
        order and returns the graph outputs (a tensor, or a tuple in ``output_names`` order);
        ``parameters`` holds every trainable float initializer once, by its ONNX name.

    Raises:
        ModelLoadError: not ONNX, truncated, no graph or nodes, rejected by the checker or
            shape inference, or conversion failed.
        ExternalDataError: an external tensor that cannot be read safely (or any, without
            ``data_dir``), naming the tensor and its location.
        UnsupportedOperatorError: an op has no converter at the model's opset.
        ResourceLimitError: the model is over one of ``limits``.
    """
    model = parse_model(data, limits)
    respelled = _spells_ai_onnx(model)
    normalize_default_domain(model)
    check_budgets(model, limits, extra_parameters=identity_copy_elements(model.graph))
    has_external = any(tensor.data_location == TensorProto.EXTERNAL
                       for tensor in model.graph.initializer)
    external = prepare_external_data(model, data_dir, limits)
    load_notes = _complete_outputs(model)
    check_supported_ops(model)
    # The checker reads the file's own bytes when the model is still exactly what they decode
    # to (serializing a large model again is the costliest step of checking it).
    unchanged = not (respelled or has_external or load_notes)
    inferred = external.restore(
        validate_and_infer(external.checkable(model), limits, notes=load_notes,
                           serialized=data if unchanged else None), model)
    check_outputs_computed(model.graph)
    check_state_widths(model.graph, inferred.graph)
    drop_zero_conv_biases(model.graph)
    constants_as_tensors(model.graph)

    display = assign_safe_names(model.graph)
    folded = tuple(display[name] for name in folded_batchnorm_nodes(model.graph))
    tied = tie_identity_initializers(model.graph)
    copies = materialize_identity_initializers(model.graph)
    inputs = input_specs(model.graph, inferred.graph)
    with external.reading():  # each external weight read once, straight into its tensor
        module = _convert(model, inferred, display)
        bound = bind_parameters(module, model.graph, opset_versions(model), display)
    output_names = tuple(value.name for value in model.graph.output)
    return_graph_outputs(module, model.graph, unwrap_single=True)
    module.eval()

    return LoadedModel(
        module=module,
        inputs=inputs,
        output_names=output_names,
        layers=_layers(model.graph, display, bound),
        parameters=bound.parameters,
        source=_source(model, data, name),
        notes=(*load_notes, *_notes(model.graph, copies, bound, folded), *_tied_notes(tied)),
        folded_normalization=folded,
        unrolled_recurrence=_unrolled(model.graph, inferred.graph, display),
    )


def _complete_outputs(model: ModelProto) -> list[str]:
    """Outputs the probe can use, declared: float tensors only, each with a type and shape.

    Returns:
        Notes on what was changed (outputs left out, types filled in).
    """
    notes = []
    completed = complete_output_types(model)
    if completed:
        notes.append(
            f"Graph outputs declared without a type or shape ({', '.join(map(repr, completed))}) "
            f"were given the ones shape inference finds.")
    pruned = keep_float_outputs(model).note()
    if pruned:
        notes.append(pruned)
    return notes


def _spells_ai_onnx(model: ModelProto) -> bool:
    """Whether :func:`normalize_default_domain` will change ``model`` (its bytes then differ)."""
    return any(entry.domain == "ai.onnx" for entry in model.opset_import) or any(
        node.domain == "ai.onnx" for node in model.graph.node)


# onnx2torch.convert starts by running onnx's shape inference on the whole model (serializing
# it, weights included, and parsing the result back: a second of a ResNet-50's load). The loader
# has already inferred, strictly, and hands that result on: while _SHAPED holds the model being
# converted, convert's inference step returns it as it is. Any other caller of onnx2torch in the
# process (another thread, a script) still gets the library's own inference.
_SHAPED: contextvars.ContextVar[ModelProto | None] = contextvars.ContextVar("shaped", default=None)
_library_inference = onnx2torch.converter.safe_shape_inference


def _inferred_or_library(model_or_path, **kwargs):
    if model_or_path is not None and model_or_path is _SHAPED.get():
        return model_or_path
    return _library_inference(model_or_path, **kwargs)


onnx2torch.converter.safe_shape_inference = _inferred_or_library


def _initializer_buffers(self: nn.Module, recurse: bool = True) -> Iterator[torch.Tensor]:
    """``InitializersContainer.buffers()``, without ``nn.Module``'s walk.

    onnx2torch names the buffer of each initializer *use* by counting the container's buffers
    (``sum(1 for _ in buffers())``) — quadratic in uses through ``nn.Module.buffers``'s
    de-duplicating walk: a dynamo ``nn.RNN`` over 400 steps (4,810 uses) spent 12 of its 13 s of
    loading there. The container holds one distinct tensor per use and no submodules, so its
    buffers are exactly its ``_buffers`` values.
    """
    del recurse
    return iter([tensor for tensor in self._buffers.values() if tensor is not None])


onnx2torch.converter.InitializersContainer.buffers = _initializer_buffers


def _convert(model: ModelProto, inferred: ModelProto, display: dict[str, str]) -> fx.GraphModule:
    # The converters read value types (a pooling input's rank) from value_info: ours, inferred
    # before the rewrites, which rename nodes and turn Identity outputs into initializers but
    # change no value's type.
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    token = _SHAPED.set(model)
    try:
        return onnx2torch.convert(model, attach_onnx_mapping=True)
    except Exception as exc:  # converters raise anything from KeyError to RuntimeError
        node = _failing_node(exc)
        shown = display.get(node.name, node.name) if node is not None else None
        if isinstance(exc, NotImplementedError) and node is not None:
            raise UnsupportedOperatorError(
                node.operation_type, domain=node.domain,
                opset=opset_versions(model).get(node.domain), node=shown,
                detail=f"node {shown!r} ({node.operation_type}) cannot be converted: "
                f"{one_line(exc)}",
            ) from None
        where = f" at node {shown!r} ({node.operation_type})" if node is not None else ""
        raise ModelLoadError(
            f"conversion to torch failed{where}: {type(exc).__name__}: {one_line(exc)}",
            node=shown,
        ) from None
    finally:
        _SHAPED.reset(token)


def _failing_node(exc: BaseException):
    """The onnx2torch node being converted when ``exc`` was raised, read from the traceback.

    ``onnx2torch.convert`` keeps it in its local ``onnx_node``; reading the frame avoids
    patching the library's global registry, which other threads may be using.
    """
    convert_code = onnx2torch.converter.convert.__code__
    trace: types.TracebackType | None = exc.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code is convert_code:
            return trace.tb_frame.f_locals.get("onnx_node")
        trace = trace.tb_next
    return None


def _unrolled(graph: GraphProto, inferred: GraphProto,
              display: dict[str, str]) -> UnrolledSequence | None:
    ranks = {value.name: len(value.type.tensor_type.shape.dim)
             for value in (*inferred.value_info, *inferred.input, *inferred.output)
             if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")}
    found = find_unrolled_recurrence(graph, [value.name for value in real_inputs(graph)], ranks)
    if found is None or not found.module_path:
        return found
    # Submodules are named after the nodes as in the file; the report shows the display names.
    return replace(found, value=display.get(found.value, found.value))


def _layers(graph: GraphProto, display: dict[str, str],
            bound: BoundParameters) -> tuple[LayerInfo, ...]:
    constants = scalar_constants(graph)
    parameters = _node_parameters(graph, bound)
    kinds_per_node = []
    for node, names in zip(graph.node, parameters, strict=True):
        kinds = set()
        if names:
            kinds.add(LayerKind.PARAMETRIC)
        if activation_of(node, constants) is not None:
            kinds.add(LayerKind.ACTIVATION)
        if node.op_type in NORMALIZATIONS:
            kinds.add(LayerKind.NORMALIZATION)
        kinds_per_node.append(frozenset(kinds))
    depths = layer_depths(graph, [bool(kinds) for kinds in kinds_per_node])
    scores = attention_score_nodes(graph)
    return tuple(
        LayerInfo(
            name=display[node.name],
            op_type=node.op_type,
            module_path=node.name,
            kinds=kinds,
            activation=activation_of(node, constants),
            parameters=names,
            depth=depth,
            attention_scores=score,
        )
        for node, kinds, names, depth, score in zip(
            graph.node, kinds_per_node, parameters, depths, scores, strict=True
        )
        if kinds
    )


_SHAPE_ONLY = frozenset({"Shape", "Size"})


def _node_parameters(graph: GraphProto, bound: BoundParameters) -> list[tuple[str, ...]]:
    """Per node, the parameters it uses.

    Its own initializer inputs, weights reaching it through weight views (``Transpose(W)``) or
    weight preparation (:func:`weight_only_nodes`: the legacy exporter's gate reordering of an
    LSTM's weights), and untraceable parameters of its module. Views and weight-only nodes hand
    their weights on and own none, unless their output is a graph output nobody else reads.
    """
    outputs = {value.name for value in graph.output}
    weight_only = weight_only_nodes(graph)
    through: dict[str, tuple[str, ...]] = {}
    result: list[tuple[str, ...]] = []
    for node, only in zip(graph.node, weight_only, strict=True):
        names: list[str] = []
        if node.op_type in _SHAPE_ONLY:
            # Reads its input's shape, not its values: no gradient reaches the tensor through it.
            # (Dynamo exports build a Conv's missing zero bias as Expand(0, Shape(W)[0]); the
            # weight went to that Expand and the Conv was left with none.)
            result.append(tuple(bound.extra_by_node.get(node.name, ())))
            continue
        reads = (*node.input, *(name for name in captured_names(node) if name not in node.input))
        for index, value in enumerate(reads):
            if value in bound.parameters:
                names.append(value)
            elif value in through:
                names.extend(through[value])
            if index == 0 and node.op_type in _WEIGHT_VIEWS and names:
                through.update(dict.fromkeys(node.output, tuple(names)))
                names = []
        if only and names and outputs.isdisjoint(node.output):
            through.update(dict.fromkeys(node.output, tuple(dict.fromkeys(names))))
            names = []
        names.extend(bound.extra_by_node.get(node.name, ()))
        result.append(tuple(dict.fromkeys(names)))
    return result


def _tied_notes(tied: dict[str, list[str]]) -> tuple[str, ...]:
    if not tied:
        return ()
    shown = "; ".join(f"{source!r} (also {', '.join(map(repr, copies))})"
                      for source, copies in list(tied.items())[:5])
    more = f"; and {len(tied) - 5} more" if len(tied) > 5 else ""
    count = sum(len(copies) for copies in tied.values())
    return (
        f"{count} initializers were stored by the exporter as Identity copies of a tensor with "
        f"non-constant values, which are not equal by coincidence: tied weights (shared layers, "
        f"tied embeddings). Each tensor is one parameter, named as stored, whose gradient is "
        f"the sum over all its uses: {shown}{more}.",
    )


def _source(model: ModelProto, data: bytes, name: str | None) -> SourceInfo:
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return SourceInfo(
        kind="onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        name=name or model.graph.name or None,
        opset=default_opset(model),
        producer=producer or None,
    )


def _notes(graph: GraphProto, copies: Sequence[str], bound: BoundParameters,
           folded: Sequence[str]) -> tuple[str, ...]:
    notes = []
    if folded:
        notes.append(
            f"The exporter folded BatchNorm into {len(folded)} node(s) (e.g. {folded[0]!r}): "
            f"their weights are fused ones and the file is an un-normalized network, not the "
            f"one that trains. To diagnose the training graph, {FOLDING_ADVICE}.")
    if copies:
        notes.append(
            f"{len(copies)} initializers were stored by the exporter as Identity copies of "
            f"another with equal constant values (deduplication of tensors initialized alike, "
            f"such as BatchNorm's ones and zeros); each is reported as its own parameter under "
            f"its own name, as in the original model."
        )
    generated = [name for name in bound.parameters if GENERATED_NAME.match(name)]
    if generated:
        notes.append(
            f"{len(generated)} weights carry names the exporter generated (e.g. "
            f"{generated[0]!r}): constant folding replaced the original tensor by a transformed "
            f"copy (a transposed Linear weight, for instance), losing its name and any tying. "
            f"Export with do_constant_folding=False (legacy exporter) or optimize=False "
            f"(dynamo=True) to keep them."
        )
    if bound.constants:
        shown = ", ".join(repr(name) for name in bound.constants[:5])
        more = f" and {len(bound.constants) - 5} more" if len(bound.constants) > 5 else ""
        notes.append(
            f"{len(bound.constants)} float initializers are treated as constants, not weights "
            f"(exponents, running statistics, non-differentiable or non-finite inputs): "
            f"{shown}{more}."
        )
    return tuple(notes)
