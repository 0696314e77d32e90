"""Make every float weight of a converted model one trainable, file-named ``nn.Parameter``.

Each weight of the onnx2torch module becomes one ``nn.Parameter`` named as its initializer.

onnx2torch 1.5.15 leaves three problems this module repairs after conversion:

* initializers that feed MatMul, Add, Gather ... are registered as *buffers*
  (``initializers.onnx_initializer_N``), which get no gradient;
* an initializer used by several nodes is copied once per use (a buffer per use, a module weight
  per Conv/Gemm), so its gradient would be split across copies;
* Gemm becomes ``nn.Linear`` holding a transposed, alpha-scaled copy of B when ``transB=0`` or
  ``alpha != 1`` - not the tensor the user sees.

Converters in :mod:`diagnostics.loading.onnx.ops` whose modules hold parameters other than a
``weight``/``bias`` pair taken from node inputs 1 and 2 declare it with a class attribute
``onnx_parameter_inputs = {"param.path": input_index}``; parameters nobody can trace are still
trainable and reported under ``{node}.{path}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from onnx import GraphProto, NodeProto, TensorProto
from onnx.defs import OpSchema, SchemaError, get_schema
from onnx2torch.utils.common import OnnxMapping
from torch import fx, nn

from diagnostics.loading.onnx.checks import FLOAT_TYPES, attribute_value
from diagnostics.loading.onnx.external_data import initializer_array
from diagnostics.stats import all_finite

_WEIGHT_INPUTS = {"weight": 1, "bias": 2}
# Rank-0 float initializers are kept constant too: exporters turn every Python scalar of the
# program (attention scale, epsilon, GELU's 0.5) into one, and a trainable 1e-5 epsilon would be
# reported as a weight with an enormous grad-to-weight ratio. A learnable 0-d Parameter is rare;
# it is listed in the load notes.
# Float inputs that are constants in every framework even where the schema calls them
# differentiable: a trainable Pow exponent gets d/dy = x^y·ln(x), NaN for every negative base
# (the LayerNorm decomposition squares centred values), and BatchNorm's running statistics are
# state, not weights. Likewise a recurrent node's initial states: exporters store the zero state
# as an initializer (dynamo's LSTM/GRU), which no torch model trains.
_CONSTANT_SLOTS = frozenset({("Pow", 1), ("BatchNormalization", 3), ("BatchNormalization", 4),
                             ("LSTM", 5), ("LSTM", 6), ("GRU", 5), ("RNN", 5)})
_BUFFER_PREFIX = "onnx_initializer_"
_SPOT_CHECKS = 64


class OnnxGemmLinear(nn.Module):
    """``Gemm(A, B, C)`` with constant B and C kept trainable in their ONNX layout.

    Replaces onnx2torch's ``nn.Linear`` where that holds a transformed copy of B (``transB=0``
    or ``alpha != 1``), so the gradient lands on the tensor the file names.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, *, alpha: float,
                 beta: float, trans_b: bool) -> None:
        """Hold ``weight`` (B as in the file) and ``bias`` (C) with Gemm's attributes."""
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.alpha, self.beta, self.trans_b = alpha, beta, trans_b

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Y = alpha · A · B' + beta · C with B' = Bᵀ when ``trans_b``."""
        output = F.linear(inputs, self.weight if self.trans_b else self.weight.T)
        if self.alpha != 1.0:
            output = output * self.alpha
        if self.bias is not None:
            output = output + (self.bias * self.beta if self.beta != 1.0 else self.bias)
        return output


@dataclass
class BoundParameters:
    """Result of :func:`bind_parameters`.

    Attributes:
        parameters: Display name -> the parameter used in the forward pass, each once.
        extra_by_node: Safe node name -> display names of parameters of that node's module that
            trace back to no initializer.
        constants: Float initializers deliberately left as buffers: rank-0 scalars, those
            only in constant slots (``_CONSTANT_SLOTS``, non-differentiable schema inputs) and
            those holding non-finite values.
    """

    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    extra_by_node: dict[str, list[str]] = field(default_factory=dict)
    constants: list[str] = field(default_factory=list)


class _Binder:
    def __init__(self, gm: fx.GraphModule, graph: GraphProto, opsets: dict[str, int],
                 display: dict[str, str]) -> None:
        self.gm, self.graph, self.opsets, self.display = gm, graph, opsets, display
        self.initializers = {init.name: init for init in graph.initializer}
        self.canonical: dict[str, nn.Parameter] = {}
        self.result = BoundParameters()
        self._subgraph_reads: dict[str, set[str]] = {}
        self.trainable: set[str] | None = None  # values some node differentiates through

    def tensor(self, name: str) -> torch.Tensor:
        # External weights come back shared with the converter's copy (read once), not anew.
        return torch.from_numpy(initializer_array(self.initializers[name]))

    def parameter_for(self, name: str) -> nn.Parameter:
        if name not in self.canonical:
            self.canonical[name] = nn.Parameter(self.tensor(name))
        return self.canonical[name]

    def is_float(self, name: str) -> bool:
        init = self.initializers.get(name)
        return init is not None and init.data_type in FLOAT_TYPES

    # --- parameters baked into converted modules (Conv, Linear, norms) ---------------------

    def bind_modules(self) -> None:
        for node in self.graph.node:
            module = self.gm.get_submodule(node.name)
            if node.op_type == "Gemm" and isinstance(module, nn.Linear):
                if self.bind_gemm(node, module):
                    continue
            for path, param in list(module.named_parameters()):
                source = self.trace(node, module, path, param)
                if source is None:
                    self.add_extra(node, path, param)
                elif source in self.canonical:
                    owner_path, _, leaf = path.rpartition(".")
                    setattr(module.get_submodule(owner_path), leaf, self.canonical[source])
                else:
                    self.canonical[source] = param

    def bind_gemm(self, node: NodeProto, module: nn.Linear) -> bool:
        alpha = attribute_value(node, "alpha")
        beta = attribute_value(node, "beta")
        alpha = 1.0 if alpha is None else float(alpha)
        beta = 1.0 if beta is None else float(beta)
        trans_b = bool(attribute_value(node, "transB") or 0)
        if trans_b and alpha == 1.0 and beta == 1.0:
            return False  # nn.Linear holds B itself: the generic tracing ties it
        bias = self.parameter_for(node.input[2]) if module.bias is not None else None
        replacement = OnnxGemmLinear(self.parameter_for(node.input[1]), bias, alpha=alpha,
                                     beta=beta, trans_b=trans_b)
        setattr(self.gm, node.name, replacement)
        return True

    def trace(self, node: NodeProto, module: nn.Module, path: str,
              param: torch.Tensor) -> str | None:
        declared = getattr(module, "onnx_parameter_inputs", None)
        index = declared.get(path) if declared else _WEIGHT_INPUTS.get(path.rpartition(".")[2])
        candidates = [node.input[index]] if index is not None and index < len(node.input) else []
        candidates += [name for name in node.input if self.is_float(name)]
        for name in dict.fromkeys(candidates):
            if self.is_float(name) and self.same_values(name, param):
                return name
        return None

    def same_values(self, name: str, param: torch.Tensor) -> bool:
        """Whether ``param`` holds the initializer ``name`` as it is (not a transformed copy).

        Shape, then a strided sample of at most ``_SPOT_CHECKS`` entries: a transposed, scaled
        or reordered copy (onnx2torch's Gemm) differs in nearly every entry, so a few suffice,
        where comparing every value cost more than the backward pass on a ResNet-50.
        """
        init = self.initializers[name]
        if tuple(param.shape) != tuple(init.dims):
            return False
        flat = param.detach().reshape(-1)
        if flat.numel() == 0:
            return True
        step = max(1, flat.numel() // _SPOT_CHECKS)
        expected = _strided_values(init, step)
        if expected is None:
            expected = self.tensor(name).reshape(-1)[::step]
        return torch.equal(flat[::step], expected.to(param.dtype))

    def add_extra(self, node: NodeProto, path: str, param: nn.Parameter) -> None:
        name = f"{self.display[node.name]}.{path}"
        while name in self.initializers or name in self.result.parameters:
            name += "_"  # never shadow an initializer's name
        self.result.parameters[name] = param
        self.result.extra_by_node.setdefault(node.name, []).append(name)

    # --- initializers onnx2torch kept as buffers ----------------------------------------------

    def buffer_sources(self) -> dict[str, str]:
        """Buffer attribute -> initializer, replaying onnx2torch's numbering.

        ``convert`` names the buffer for the k-th initializer *use* ``onnx_initializer_{k}``,
        walking nodes in order and each node's ``onnx_mapping.inputs`` (graph inputs and node
        outputs first, as its value-type lookup does).
        """
        inputs = {value.name for value in self.graph.input} - set(self.initializers)
        produced = {name for node in self.graph.node for name in node.output}
        sources: dict[str, str] = {}
        for node in self.graph.node:
            for name in self.fed_inputs(node):
                if name in inputs or name in produced or name not in self.initializers:
                    continue
                sources[f"{_BUFFER_PREFIX}{len(sources)}"] = name
        container = getattr(self.gm, "initializers", nn.Module())
        buffers = dict(container.named_buffers(recurse=False))
        for attr, name in sources.items():
            buffer = buffers.get(attr)
            if buffer is None or tuple(buffer.shape) != tuple(self.initializers[name].dims):
                raise RuntimeError(f"onnx2torch buffer {attr} does not match initializer {name!r}")
        return sources

    def fed_inputs(self, node: NodeProto) -> tuple[str, ...]:
        """The values onnx2torch feeds the node's module, subgraph captures included."""
        module = self.gm.get_submodule(node.name)
        # convert(attach_onnx_mapping=True) set it as a plain attribute; torch types a module's
        # attributes as tensors or submodules.
        return tuple(cast(OnnxMapping, module.onnx_mapping).inputs)

    def bind_buffers(self, sources: dict[str, str]) -> None:
        if not sources:
            return
        first: dict[str, str] = {}
        for attr, name in sources.items():
            first.setdefault(name, attr)
        for fx_node in self.gm.graph.nodes:
            if fx_node.op == "get_attr" and fx_node.target.startswith("initializers."):
                attr = fx_node.target.removeprefix("initializers.")
                if attr in sources:
                    fx_node.target = f"initializers.{first[sources[attr]]}"
        container = self.gm.get_submodule("initializers")
        for attr, name in sources.items():
            if first[name] != attr:
                del container._buffers[attr]  # a duplicate copy: its uses now read the first
            elif self.is_float(name):
                self.promote(container, attr, name)

    def promote(self, container: nn.Module, attr: str, name: str) -> None:
        buffer = container.get_buffer(attr)
        if name not in self.canonical:
            if (buffer.dim() == 0 or not self.trainable_use(name)
                    or not all_finite(buffer)):
                self.result.constants.append(name)
                return
            # The buffer is this use's own tensor (onnx2torch's copy, or a weight read from
            # external data, held once): the parameter takes its storage over, no copy.
            self.canonical[name] = nn.Parameter(buffer.detach())
        del container._buffers[attr]
        container.register_parameter(attr, self.canonical[name])

    def trainable_use(self, name: str) -> bool:
        if self.trainable is None:
            self.trainable = {value for node in self.graph.node
                              for index, value in enumerate(node.input)
                              if _differentiable(node, index, self.opsets)}
        if name in self.trainable:
            return True
        # A Loop body reading a weight by name.
        return any(name in self.subgraph_reads(node) for node in self.graph.node)

    def subgraph_reads(self, node: NodeProto) -> set[str]:
        if node.name not in self._subgraph_reads:
            self._subgraph_reads[node.name] = (
                set(self.fed_inputs(node)) - set(node.input)
                if any(a.HasField("g") or a.graphs for a in node.attribute) else set())
        return self._subgraph_reads[node.name]

    # --- result -------------------------------------------------------------------------------

    def finish(self) -> BoundParameters:
        # Subgraph captures (a Loop body, an If branch reading a weight by name) count as uses.
        order = [name for node in self.graph.node
                 for name in (*node.input, *sorted(self.subgraph_reads(node)))
                 if name in self.canonical]
        named = {name: self.canonical[name] for name in dict.fromkeys(order)}
        named.update(self.result.parameters)
        seen = {id(param) for param in named.values()}
        for path, param in self.gm.named_parameters():
            if id(param) not in seen:  # defensive: nothing trainable goes unreported
                named[path] = param
                seen.add(id(param))
        self.result.parameters = named
        return self.result


def _strided_values(init, step: int) -> torch.Tensor | None:
    """Every ``step``-th value of a float32 initializer held as raw bytes, decoding nothing
    else; None for other encodings (the caller decodes the whole tensor)."""
    if init.data_type != TensorProto.FLOAT or not init.HasField("raw_data"):
        return None
    values = np.frombuffer(init.raw_data, dtype="<f4")[::step]
    return torch.from_numpy(values.astype(np.float32))


def _differentiable(node: NodeProto, index: int, opsets: dict[str, int]) -> bool:
    if (node.op_type, index) in _CONSTANT_SLOTS:
        return False
    try:
        schema = get_schema(node.op_type, max_inclusive_version=opsets.get(node.domain, 1),
                            domain=node.domain)
    except SchemaError:
        return True
    formal = schema.inputs
    if index >= len(formal):
        if not formal or formal[-1].option != OpSchema.FormalParameterOption.Variadic:
            return True
        index = len(formal) - 1
    category = formal[index].differentiation_category
    return category != OpSchema.DifferentiationCategory.NonDifferentiable


def bind_parameters(gm: fx.GraphModule, graph: GraphProto, opsets: dict[str, int],
                    display: dict[str, str]) -> BoundParameters:
    """Tie, promote and name every float weight of ``gm`` (converted from ``graph``).

    Args:
        gm: onnx2torch's module, converted with ``attach_onnx_mapping=True`` from ``graph``
            whose nodes carry the safe names used as submodule names.
        graph: The graph that was converted.
        opsets: Domain -> imported opset (default domain as ``""``).
        display: Safe node name -> display node name.

    Returns:
        The parameters by display name (initializer names where traceable).
    """
    binder = _Binder(gm, graph, opsets, display)
    sources = binder.buffer_sources()  # before bind_modules swaps modules it reads
    binder.bind_modules()
    binder.bind_buffers(sources)
    gm.recompile()
    return binder.finish()
