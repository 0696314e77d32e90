"""One traced forward pass of a live module: which submodules it calls, and the layers to watch.

What the spec and ONNX loaders read from their document is read here from the pass on the
caller's inputs:

- watched layers are the submodules the pass calls that hold parameters of their own, are an
  activation (by class) or a normalization; layer names are the ``named_modules`` paths;
- parameter names are ``state_dict`` names (a tied tensor under its first name); parameters of a
  submodule the pass never calls but whose parent uses them (``MultiheadAttention.out_proj``,
  applied with ``F.linear``) belong to the nearest called ancestor; parameters nothing uses are
  left out, and a note says so;
- a layer's depth is the longest count of watched layers between its output and a model output,
  walked on the autograd graph of the traced pass, so skips and branches count as they do in an
  exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from diagnostics.config import NormStats
from diagnostics.errors import InvalidInputsError
from diagnostics.model import Activation, LayerInfo, LayerKind
from diagnostics.probe import float_tensors, probe_mode

WRAPPED = "model"  # the caller's module sits at this path inside :class:`ModuleCall`


# Most specific class first: ReLU6 is a Hardtanh, and every entry is checked with isinstance.
_ACTIVATIONS: tuple[tuple[type[nn.Module], Activation], ...] = (
    (nn.ReLU, Activation.RELU), (nn.ReLU6, Activation.RELU6),
    (nn.LeakyReLU, Activation.LEAKY_RELU), (nn.PReLU, Activation.PRELU),
    (nn.ELU, Activation.ELU), (nn.SELU, Activation.SELU), (nn.CELU, Activation.CELU),
    (nn.GELU, Activation.GELU), (nn.SiLU, Activation.SILU), (nn.Mish, Activation.MISH),
    (nn.Softplus, Activation.SOFTPLUS), (nn.Softsign, Activation.SOFTSIGN),
    (nn.Sigmoid, Activation.SIGMOID), (nn.Tanh, Activation.TANH),
    (nn.Hardtanh, Activation.HARDTANH), (nn.Hardsigmoid, Activation.HARDSIGMOID),
    (nn.Hardswish, Activation.HARDSWISH), (nn.LogSigmoid, Activation.LOG_SIGMOID),
    (nn.Softmax, Activation.SOFTMAX), (nn.LogSoftmax, Activation.LOG_SOFTMAX),
)


# Activation modules of libraries that do not subclass torch's (transformers' activations.py).
_ACTIVATION_NAMES = {
    "GELUActivation": Activation.GELU, "NewGELUActivation": Activation.GELU,
    "FastGELUActivation": Activation.GELU, "QuickGELUActivation": Activation.GELU,
    "GELUTanh": Activation.GELU, "PytorchGELUTanh": Activation.GELU,
    "SiLUActivation": Activation.SILU, "MishActivation": Activation.MISH,
}


_NORMALIZATIONS: tuple[type[nn.Module], ...] = (
    _BatchNorm, _InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


_NORMALIZATION_NAMES = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm")


class ModuleCall(nn.Module):
    """Calls the wrapped module the way the caller does: positionally, or with keywords.

    The probe calls every model as ``module(*tensors)``; this maps the tensors back to the
    caller's arguments and adds the non-tensor keyword values (``return_dict=False`` ...).
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], keywords: bool,
                 constants: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.keywords = keywords
        self.constants = constants
        self.inplace_paths: tuple[str, ...] = ()

    def forward(self, *tensors: torch.Tensor) -> Any:
        """The wrapped module's output for these inputs."""
        if self.keywords:
            return self.model(**dict(zip(self.names, tensors, strict=True)), **self.constants)
        return self.model(*tensors)


@dataclass
class Calls:
    """What the traced pass saw: modules in first-call order and each one's output nodes."""

    order: list[str]
    nodes: dict[str, list[Any]]  # module path -> autograd nodes of its outputs (one per call)
    roots: list[Any]  # autograd nodes of the model outputs


def trace_calls(wrapper: ModuleCall, tensors: tuple[torch.Tensor, ...]) -> Calls:
    calls = Calls([], {}, [])
    handles = []

    def hook(path: str):
        def record(_module: nn.Module, _args: object, output: object) -> None:
            if path not in calls.nodes:
                calls.order.append(path)
                calls.nodes[path] = []
            node = next((t.grad_fn for t in float_tensors(output) if t.grad_fn is not None),
                        None)
            if node is not None:
                calls.nodes[path].append(node)

        return record

    with probe_mode(wrapper, NormStats.RUNNING), torch.enable_grad():
        try:
            for path, sub in wrapper.named_modules():
                if path:
                    handles.append(sub.register_forward_hook(hook(path)))
            try:
                outputs = wrapper(*tensors)
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else \
                    type(exc).__name__
                raise InvalidInputsError(
                    f"the module's forward pass failed on these inputs: {message}") from exc
            calls.roots = [t.grad_fn for t in float_tensors(outputs) if t.grad_fn is not None]
        finally:
            for handle in handles:
                handle.remove()
    return calls


def watched_layers(wrapper: ModuleCall, calls: Calls) -> tuple[tuple[LayerInfo, ...],
                                                         dict[str, nn.Parameter], list[str]]:
    called = set(calls.order)
    containers = {ancestor for path in called for ancestor in _ancestors(path)} & called
    display: dict[int, str] = {}  # id(parameter) -> state_dict name (first of a tied tensor)
    for name, param in wrapper.model.named_parameters():
        display.setdefault(id(param), name)
    owned: dict[str, list[nn.Parameter]] = {}
    held: dict[str, list[nn.Parameter]] = {}  # parameters a container uses in its own forward
    unused: list[str] = []
    for path, sub in wrapper.named_modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        owner = _called_ancestor(path, called)
        if owner is None:
            unused.extend(display[id(p)] for p in own if id(p) in display)
            continue
        (held if owner in containers else owned).setdefault(owner, []).extend(own)
    graph = _Graph(calls.roots)
    watched = _watched(wrapper, calls, owned)
    # A container's own parameter (a class token, a position embedding, a layer scale) is used
    # by an op inside its forward, not at its output: it belongs to the watched layer whose
    # output that op takes, as an exported graph lists it under the node that consumes it.
    at = {node: path for path in watched for node in calls.nodes[path]}
    for container, params in held.items():
        for param in params:
            target = graph.producer_of_input(param, at) or graph.consumer_of_output(param, at) \
                or container
            owned.setdefault(target, []).append(param)
    watched = _watched(wrapper, calls, owned)
    depths = _depths(calls, graph, list(watched))
    layers, parameters = [], {}
    for path, (sub, kinds, activation) in watched.items():
        params = owned.get(path, [])
        names = tuple(dict.fromkeys(display[id(p)] for p in params))
        for param in params:
            parameters[display[id(param)]] = param
        layers.append(LayerInfo(
            name=type(sub).__name__ if path == WRAPPED else path.removeprefix(f"{WRAPPED}."),
            op_type=type(sub).__name__, module_path=path,
            kinds=frozenset(kinds), activation=activation, parameters=names,
            depth=max((depths.get(node, 0) for node in calls.nodes[path]), default=0)))
    used = set(parameters)
    unused = [name for name in dict.fromkeys(unused) if name not in used]
    return tuple(layers), parameters, unused


def _watched(wrapper: ModuleCall, calls: Calls, owned: dict[str, list[nn.Parameter]]
             ) -> dict[str, tuple[nn.Module, set[LayerKind], Activation | None]]:
    """Called modules worth watching, in call order: with parameters, activations, norms."""
    watched = {}
    for path in calls.order:
        sub = wrapper.get_submodule(path)
        kinds, activation = _kinds(sub)
        if owned.get(path):
            kinds.add(LayerKind.PARAMETRIC)
        if kinds:
            watched[path] = (sub, kinds, activation)
    return watched


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


class _Graph:
    """The autograd graph of the traced pass, walked once from the outputs."""

    def __init__(self, roots: list[Any]) -> None:
        self.roots = roots
        self.consumers: dict[Any, int] = {}
        self.following: dict[Any, list[Any]] = {}  # node -> the nodes that take its output
        self.users: dict[int, list[Any]] = {}  # id(parameter) -> nodes that take it as input
        seen, stack = set(roots), list(roots)
        while stack:
            node = stack.pop()
            for parent, _ in node.next_functions:
                if parent is None:
                    continue
                self.consumers[parent] = self.consumers.get(parent, 0) + 1
                self.following.setdefault(parent, []).append(node)
                variable = getattr(parent, "variable", None)
                if variable is not None:
                    self.users.setdefault(id(variable), []).append(node)
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)

    def producer_of_input(self, param: nn.Parameter, at: dict[Any, str]) -> str | None:
        """The watched layer nearest upstream of the ops that use ``param`` (breadth first)."""
        frontier = list(self.users.get(id(param), []))
        seen = set(frontier)
        while frontier:
            following = []
            for node in frontier:
                for parent, _ in node.next_functions:
                    if parent is None or parent in seen:
                        continue
                    if parent in at:
                        return at[parent]
                    seen.add(parent)
                    following.append(parent)
            frontier = following
        return None

    def consumer_of_output(self, param: nn.Parameter, at: dict[Any, str]) -> str | None:
        """The watched layer nearest downstream of the ops that use ``param`` (a parameter used
        on no layer's output, like a class token that is expanded and concatenated)."""
        frontier = list(self.users.get(id(param), []))
        seen = set(frontier)
        while frontier:
            following = []
            for node in frontier:
                if node in at:
                    return at[node]
                for child in self.following.get(node, []):
                    if child not in seen:
                        seen.add(child)
                        following.append(child)
            frontier = following
        return None


def _called_ancestor(path: str, called: set[str]) -> str | None:
    while path:
        if path in called:
            return path
        path = path.rpartition(".")[0]
    return None


def _kinds(sub: nn.Module) -> tuple[set[LayerKind], Activation | None]:
    kinds: set[LayerKind] = set()
    activation = next((family for cls, family in _ACTIVATIONS if isinstance(sub, cls)),
                      _ACTIVATION_NAMES.get(type(sub).__name__))
    if activation is not None:
        kinds.add(LayerKind.ACTIVATION)
    name = type(sub).__name__
    if isinstance(sub, _NORMALIZATIONS) or any(name.endswith(n) for n in _NORMALIZATION_NAMES):
        kinds.add(LayerKind.NORMALIZATION)
    return kinds, activation


def _depths(calls: Calls, graph: _Graph, watched: list[str]) -> dict[Any, int]:
    """Longest count of watched outputs between each autograd node and a model output.

    Kahn's algorithm from the output nodes backwards along ``next_functions``: a node's
    distance is the largest of its consumers' distances, plus one where the consumer is the
    output of a watched layer.
    """
    marks = {node for path in watched for node in calls.nodes[path]}
    consumers = dict(graph.consumers)
    distance = dict.fromkeys(calls.roots, 0)
    ready = [node for node in dict.fromkeys(calls.roots) if consumers.get(node, 0) == 0]
    while ready:
        node = ready.pop()
        step = distance[node] + (1 if node in marks else 0)
        for parent, _ in node.next_functions:
            if parent is None:
                continue
            distance[parent] = max(distance.get(parent, 0), step)
            consumers[parent] -= 1
            if consumers[parent] == 0:
                ready.append(parent)
    return distance
