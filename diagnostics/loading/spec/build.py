"""Validated spec -> torch module, initialized and named, ready to probe.

:func:`build_spec` is a function of the spec, the seed and the limits alone: remedies edit a
spec and call it again. Randomness is seeded per layer from ``(seed, layer name)``, so editing
one layer (say, swapping an activation) leaves every other layer's initial weights unchanged,
and the caller's global RNG state is restored afterwards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.loading.spec.init_schemes import apply_init
from diagnostics.loading.spec.layers import LAYER_TYPES, Group
from diagnostics.loading.spec.modules import SpecRepeat, SpecResidual, SpecSequential
from diagnostics.loading.spec.schema import (
    InputDtype,
    LayerSpec,
    ModuleSpec,
    RepeatSpec,
    ResidualSpec,
    SpecModel,
    iter_leaves,
    validate_spec,
)
from diagnostics.loading.spec.shapes import check_shapes
from diagnostics.model import InputSpec, LayerInfo, LayerKind, LoadedModel, SourceInfo

OUTPUT_NAME = "output"


def build_spec(spec: SpecModel, *, seed: int = 0,
               limits: Limits = DEFAULT_LIMITS) -> LoadedModel:
    """Build a validated spec into a model ready to probe.

    The spec is validated again first (cheap), so a spec edited in code cannot skip the
    allowlist or the budgets; then its shapes are checked on the meta device; only then are
    real weights allocated.

    Args:
        spec: From :func:`~diagnostics.loading.spec.loader.parse_spec`, possibly edited.
        seed: Seeds every layer's initialization (torch defaults included).
        limits: Size budgets.

    Returns:
        The model in eval mode. Layer names are JSON paths (``layers.3``,
        ``layers.2.layers.1``; copy 4 of a Repeat at ``layers.2`` is ``layers.2[4]``);
        parameter names are ``<layer name>.<torch parameter name>``.

    Raises:
        InvalidSpecError: The spec is malformed or its layers' shapes do not chain.
        ResourceLimitError: It would exceed a budget.
    """
    spec = validate_spec(spec.to_dict(), limits)
    check_shapes(spec, limits)
    with torch.random.fork_rng(devices=[]):
        modules, tree = _Builder(spec, seed).build_list(spec.layers, "layers", "layers")
    module = SpecSequential(modules).eval()
    _assign_depths(tree, 0)
    leaves = list(_leaves(tree))
    parameters = {f"{leaf.name}.{name}": param
                  for leaf in leaves for name, param in leaf.module.named_parameters()}
    return LoadedModel(
        module=module, inputs=(_input_spec(spec),), output_names=(OUTPUT_NAME,),
        layers=tuple(_layer_info(leaf) for leaf in leaves if leaf.watched),
        parameters=parameters,
        source=SourceInfo(kind="spec", sha256=spec_sha256(spec), name=spec.name))


def spec_sha256(spec: SpecModel) -> str:
    """SHA-256 of the spec's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def layer_seed(seed: int, name: str) -> int:
    """The seed of one layer's initialization, from the model seed and the layer's name."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class _Leaf:
    name: str
    module_path: str
    spec: ModuleSpec
    module: nn.Module
    kinds: frozenset[LayerKind]
    depth: int = 0

    @property
    def watched(self) -> bool:
        return bool(self.kinds)


@dataclass
class _Chain:
    children: list[_Leaf | _Chain | _Skip] = field(default_factory=list)


@dataclass
class _Skip:
    branch: _Chain


class _Builder:
    def __init__(self, spec: SpecModel, seed: int) -> None:
        self.spec = spec
        self.seed = seed

    def build_list(self, layers: tuple[LayerSpec, ...], name: str,
                   path: str) -> tuple[list[nn.Module], _Chain]:
        modules, chain = [], _Chain()
        for index, layer in enumerate(layers):
            module, node = self.build(layer, f"{name}.{index}", f"{path}.{index}")
            modules.append(module)
            chain.children.append(node)
        return modules, chain

    def build(self, layer: LayerSpec, name: str,
              path: str) -> tuple[nn.Module, _Leaf | _Chain | _Skip]:
        if isinstance(layer, ModuleSpec):
            leaf = self.leaf(layer, name, path)
            return leaf.module, leaf
        if isinstance(layer, RepeatSpec):
            blocks, copies = [], _Chain()
            for copy in range(layer.times):
                modules, chain = self.build_list(layer.layers, f"{name}[{copy}].layers",
                                                 f"{path}.{copy}.layers")
                blocks.append(SpecSequential(modules))
                copies.children.append(chain)
            return SpecRepeat(blocks), copies
        modules, chain = self.build_list(layer.layers, f"{name}.layers", f"{path}.layers")
        if isinstance(layer, ResidualSpec):
            return SpecResidual(modules), _Skip(chain)
        return SpecSequential(modules), chain

    def leaf(self, spec: ModuleSpec, name: str, path: str) -> _Leaf:
        layer_type = LAYER_TYPES[spec.type]
        seed = layer_seed(self.seed, name)
        # torch's own reset_parameters draws from the global generator (forked by the caller).
        torch.default_generator.manual_seed(seed)
        module = layer_type.instantiate(spec.args)
        weighted = layer_type.group is Group.WEIGHTED
        apply_init(module, spec.init or (self.spec.init if weighted else None),
                   bias_init=spec.bias_init or (self.spec.bias_init if weighted else None),
                   recurrent_init=spec.recurrent_init,
                   generator=torch.Generator().manual_seed(seed))
        kinds = {LayerKind.PARAMETRIC} if any(True for _ in module.parameters()) else set()
        if layer_type.group is Group.NORMALIZATION:
            kinds.add(LayerKind.NORMALIZATION)
        if layer_type.group is Group.ACTIVATION:
            kinds.add(LayerKind.ACTIVATION)
        return _Leaf(name, path, spec, module, frozenset(kinds))


def _assign_depths(node: _Leaf | _Chain | _Skip, below: int) -> int:
    """Set each watched leaf's depth; return the longest watched count from ``node``'s input."""
    if isinstance(node, _Leaf):
        if not node.watched:
            return below
        node.depth = below
        return below + 1
    if isinstance(node, _Skip):
        # The skip path adds no watched layer; the branch adds its own.
        return max(below, _assign_depths(node.branch, below))
    for child in reversed(node.children):
        below = _assign_depths(child, below)
    return below


def _leaves(node: _Leaf | _Chain | _Skip) -> Iterator[_Leaf]:
    if isinstance(node, _Leaf):
        yield node
    elif isinstance(node, _Skip):
        yield from _leaves(node.branch)
    else:
        for child in node.children:
            yield from _leaves(child)


def _layer_info(leaf: _Leaf) -> LayerInfo:
    return LayerInfo(
        name=leaf.name, op_type=leaf.spec.type, module_path=leaf.module_path, kinds=leaf.kinds,
        activation=LAYER_TYPES[leaf.spec.type].activation,
        parameters=tuple(f"{leaf.name}.{name}" for name, _ in leaf.module.named_parameters()),
        depth=leaf.depth)


def _input_spec(spec: SpecModel) -> InputSpec:
    item = spec.inputs[0]
    vocab = None
    if item.dtype is not InputDtype.FLOAT32:
        # Ids pass through Identity/Flatten unchanged; the first other layer is the Embedding
        # (check_shapes has refused anything else).
        first = next((leaf.spec for leaf in iter_leaves(spec.layers)
                      if leaf.spec.type not in ("Identity", "Flatten")), None)
        vocab = first.args.get("num_embeddings") if first is not None else None
    return InputSpec(name=item.name, shape=item.shape, dtype=item.dtype.value, vocab=vocab)
