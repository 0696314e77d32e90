"""The contract between the loaders (ONNX, spec) and the probe.

A loader turns user input into a :class:`LoadedModel`: a torch module plus the facts the probe
and the report need — which submodules are the "layers" to watch, what each is called in the
user's world, which parameters each one uses (by the name the user knows), and the inputs the
module takes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import cast

import torch
from torch import nn


class LayerKind(StrEnum):
    """Why a node is watched: it has parameters, it is an activation, or it normalizes."""

    PARAMETRIC = "parametric"
    ACTIVATION = "activation"
    NORMALIZATION = "normalization"


class Activation(StrEnum):
    """Activation families whose shape of derivative the statistics understand.

    Zero-slope families (relu, relu6, hardswish ...) can have dead units; flat-tailed ones
    (sigmoid, tanh, softsign, hardtanh, hardsigmoid) can saturate.
    """

    RELU = "relu"
    RELU6 = "relu6"
    LEAKY_RELU = "leaky_relu"
    PRELU = "prelu"
    ELU = "elu"
    SELU = "selu"
    CELU = "celu"
    GELU = "gelu"
    SILU = "silu"
    MISH = "mish"
    SOFTPLUS = "softplus"
    SOFTSIGN = "softsign"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    HARDTANH = "hardtanh"
    HARDSIGMOID = "hardsigmoid"
    HARDSWISH = "hardswish"
    LOG_SIGMOID = "log_sigmoid"
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"
    OTHER = "other"


@dataclass(frozen=True)
class LayerInfo:
    """One watched node of the model.

    Attributes:
        name: What the user calls it: the ONNX node name as in the file, or the spec's JSON path
            (``layers.3``, ``layers.2.layers.1``).
        op_type: ONNX op type (``Conv``, ``Gemm``) or torch.nn class name for specs.
        module_path: Dotted path of the submodule in ``LoadedModel.module`` whose forward output
            is this node's output (the probe hooks it).
        kinds: Why it is watched (a Gemm with a fused activation could be both).
        activation: Activation family, for activation layers.
        parameters: Display names (keys of ``LoadedModel.parameters``) of the trainable tensors
            this node uses, in input order. A tensor used by several nodes appears in each.
        depth: Longest distance, counted in watched layers, from this node to a model output;
            the layer producing an output has depth 0.
        attention_scores: It reaches the outputs only through an attention softmax (an
            attention's query and key projections), where the graph shows it.
    """

    name: str
    op_type: str
    module_path: str
    kinds: frozenset[LayerKind]
    activation: Activation | None = None
    parameters: tuple[str, ...] = ()
    depth: int = 0
    attention_scores: bool = False


@dataclass(frozen=True)
class InputSpec:
    """One model input.

    Attributes:
        name: Input name (ONNX graph input name, or the spec's input name).
        shape: Dimensions; ``None`` or a symbolic name (str) where the model leaves it dynamic.
        dtype: numpy dtype name: ``float32``, ``int64``, ``bool`` ...
        vocab: For integer inputs that index a table (Embedding, Gather): its number of rows,
            so synthesized ids stay inside it.
        max_sizes: ``(axis, largest size)`` for dynamic axes the graph bounds: a sequence axis
            that indexes a position-embedding table can be at most the table's length.
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str = "float32"
    vocab: int | None = None
    max_sizes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class SourceInfo:
    """Where the model came from, for the report."""

    kind: str  # "onnx" | "spec"
    sha256: str
    name: str | None = None
    opset: int | None = None
    producer: str | None = None


@dataclass(frozen=True)
class UnrolledSequence:
    """The input sequence of a recurrence the exporter unrolled into one cell copy per step
    (dynamo's ``nn.RNN``; a loop over ``nn.LSTMCell``): where its temporal profile is measured.

    Attributes:
        value: Name of the sequence tensor (for the report).
        module_path: Submodule whose output ``output`` it is; ``""`` for the module's own
            input number ``output`` (a graph input).
        output: Which output of that submodule, or which model input.
        time_axis: The axis the steps are cut along.
        steps: How many steps the file unrolled.
        gated: A sigmoid gate lies on the recurrent path (an LSTM/GRU-like cell).
        cell_paths: Submodules on the recurrent path, from the first step's product by the
            recurrent weight to the last: the cell's own nonlinearities, which are no hidden
            layers of a deep stack.
    """

    value: str
    module_path: str
    output: int
    time_axis: int
    steps: int
    gated: bool
    cell_paths: frozenset[str] = frozenset()


@dataclass
class LoadedModel:
    """A model ready to probe.

    Attributes:
        module: Called as ``module(*inputs)`` with tensors in ``inputs`` order; returns a tensor
            or a tuple/list of tensors (the model outputs, in ``output_names`` order).
        inputs: The model's inputs.
        output_names: Names of the outputs.
        layers: Watched nodes in topological order.
        parameters: Display name -> the trainable tensor. Every float weight the model has is
            here exactly once, whichever node(s) use it.
        source: Provenance for the report.
        notes: Facts the report should pass on (e.g. "BatchNorm folded into Conv by the
            exporter").
        folded_normalization: Names of layers into which the exporter folded a BatchNorm: the
            file is then not the graph that trains (the verdict says so).
        unrolled_recurrence: A recurrence unrolled step by step in the file, if any.
    """

    module: nn.Module
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    parameters: dict[str, nn.Parameter]
    source: SourceInfo
    notes: tuple[str, ...] = field(default=())
    folded_normalization: tuple[str, ...] = field(default=())
    unrolled_recurrence: UnrolledSequence | None = None


def copy_model(model: LoadedModel) -> LoadedModel:
    """A deep copy whose ``parameters`` point at the copy's tensors."""
    memo: dict[int, object] = {}
    module = copy.deepcopy(model.module, memo)
    # deepcopy's memo maps each original's id to its copy: a parameter's copy is a parameter.
    params = {name: cast(nn.Parameter, memo[id(param)])
              for name, param in model.parameters.items()}
    return replace(model, module=module, parameters=params)


@contextmanager
def restoring_values(model: LoadedModel) -> Iterator[LoadedModel]:
    """``model`` itself, for an edit that changes tensor values only; every parameter's and
    buffer's value is put back when the block ends, however it ends.

    The cheap alternative to :func:`copy_model` for re-initializing or rescaling weights: a
    clone of each tensor instead of a deep copy of the module tree (~9 ms for a 13-layer MLP,
    most of it Python's ``deepcopy`` walking module dictionaries).
    """
    tensors = {id(t): t for t in (*model.parameters.values(), *model.module.parameters(),
                                  *model.module.buffers())}
    saved = [(tensor, tensor.detach().clone()) for tensor in tensors.values()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
