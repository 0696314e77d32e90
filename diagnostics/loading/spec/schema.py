"""The architecture spec as validated data: pydantic models and the validator that makes them.

``validate_spec`` walks the raw JSON value once, checks every key against the allowlist
(:mod:`diagnostics.loading.spec.layers`), and returns a frozen :class:`SpecModel`. Errors name
the JSON path (``layers[3].out_features``). Budgets (``max_nesting``, ``max_nodes``,
``max_parameters``, ``max_tensor_elements``) are checked with arithmetic on the validated spec,
before any module exists: a ``Repeat`` of 10^9 is refused by multiplication, not by expansion.

To change a spec (remedies do), edit ``spec.to_dict()`` and validate the result again.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from diagnostics.errors import InvalidSpecError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.loading.spec.args import MAX_RANK, Int, describe, key_path, wrong_type
from diagnostics.loading.spec.init_schemes import MATRIX_SCHEMES, InitSpec, parse_init
from diagnostics.loading.spec.layers import CONTAINER_TYPES, LAYER_TYPES, Group, LayerType

_MAX_NAME = 256


class InputDtype(StrEnum):
    """Input element types a spec can declare (integer inputs feed an Embedding)."""

    FLOAT32 = "float32"
    INT64 = "int64"
    INT32 = "int32"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputModel(_Frozen):
    """One declared input: name, full shape (batch first), element type."""

    name: str
    shape: tuple[int, ...]
    dtype: InputDtype = InputDtype.FLOAT32


class ModuleSpec(_Frozen):
    """A leaf layer: an allowlisted torch.nn class and its validated constructor arguments."""

    type: str
    args: dict[str, Any] = {}
    init: InitSpec | None = None
    bias_init: InitSpec | None = None
    recurrent_init: InitSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """The layer as the spec writes it."""
        out: dict[str, Any] = {"type": self.type}
        out |= {key: list(value) if isinstance(value, tuple) else value
                for key, value in self.args.items()}
        for key in ("init", "bias_init", "recurrent_init"):
            scheme = getattr(self, key)
            if scheme is not None:
                out[key] = scheme.to_dict()
        return out


class _Container(_Frozen):
    layers: tuple[LayerSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        """The container as the spec writes it."""
        return {"type": getattr(self, "type"),  # noqa: B009 - declared by each subclass
                "layers": [layer.to_dict() for layer in self.layers]}


class SequentialSpec(_Container):
    """``layers`` run in order."""

    type: Literal["Sequential"] = "Sequential"


class ResidualSpec(_Container):
    """``output = input + layers(input)``."""

    type: Literal["Residual"] = "Residual"


class RepeatSpec(_Container):
    """``times`` copies of ``layers`` in a chain, each with fresh parameters."""

    type: Literal["Repeat"] = "Repeat"
    times: int

    def to_dict(self) -> dict[str, Any]:
        """The container as the spec writes it."""
        return {**super().to_dict(), "times": self.times}


LayerSpec = ModuleSpec | SequentialSpec | ResidualSpec | RepeatSpec


class SpecModel(_Frozen):
    """A validated architecture spec."""

    name: str | None = None
    inputs: tuple[InputModel, ...]
    init: InitSpec | None = None
    bias_init: InitSpec | None = None
    layers: tuple[LayerSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data, the form :func:`validate_spec` takes back."""
        out: dict[str, Any] = {} if self.name is None else {"name": self.name}
        out["inputs"] = [item.model_dump(mode="json") for item in self.inputs]
        for key in ("init", "bias_init"):
            scheme = getattr(self, key)
            if scheme is not None:
                out[key] = scheme.to_dict()
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out


for _model in (_Container, SequentialSpec, ResidualSpec, RepeatSpec, SpecModel):
    _model.model_rebuild()


def validate_spec(raw: Any, limits: Limits) -> SpecModel:
    """Validate a parsed spec document and check it against the budgets.

    Args:
        raw: The JSON value (from
            :func:`~diagnostics.loading.spec.parsing.parse_json_text`, or a caller's dict).
        limits: Budgets; see :func:`check_budgets`.

    Returns:
        The validated spec.

    Raises:
        InvalidSpecError: Anything malformed, with the JSON path at fault.
        ResourceLimitError: Containers nested deeper than ``max_nesting``, or a budget exceeded.
    """
    if not isinstance(raw, dict):
        raise wrong_type("", "a JSON object (the spec)", raw)
    _check_keys(raw, "", ("name", "inputs", "init", "bias_init", "layers"),
                required=("inputs", "layers"))
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > _MAX_NAME):
        raise wrong_type("name", f"a string of at most {_MAX_NAME} characters", name)
    spec = SpecModel(
        name=name, inputs=_inputs(raw["inputs"], limits),
        init=_optional_init(raw, "init", ""), bias_init=_optional_init(raw, "bias_init", ""),
        layers=_layer_list(raw["layers"], "layers", 0, limits))
    check_budgets(spec, limits)
    return spec


def _check_keys(raw: dict[Any, Any], path: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> None:
    for key in raw:
        if key not in allowed:
            raise InvalidSpecError(key_path(path, key),
                                   f"unknown key (allowed here: {', '.join(allowed)})")
    for key in required:
        if key not in raw:
            raise InvalidSpecError(key_path(path, key), "required")


def _optional_init(raw: dict[str, Any], key: str, path: str) -> InitSpec | None:
    if key not in raw:
        return None
    return parse_init(raw[key], key_path(path, key), for_bias=key == "bias_init")


def _inputs(raw: Any, limits: Limits) -> tuple[InputModel, ...]:
    if not isinstance(raw, list):
        raise wrong_type("inputs", "a list of inputs", raw)
    if len(raw) != 1:
        raise InvalidSpecError("inputs", f"a spec model takes exactly one input, got {len(raw)}")
    item = raw[0]
    if not isinstance(item, dict):
        raise wrong_type("inputs[0]", 'an object like {"name": "x", "shape": [16, 64]}', item)
    _check_keys(item, "inputs[0]", ("name", "shape", "dtype"), required=("name", "shape"))
    name, shape = item["name"], item["shape"]
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise wrong_type("inputs[0].name", "a non-empty string", name)
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK:
        raise wrong_type("inputs[0].shape", f"a list of 1 to {MAX_RANK} sizes, batch first",
                         shape)
    dims = tuple(Int().parse_int(dim, f"inputs[0].shape[{axis}]")
                 for axis, dim in enumerate(shape))
    dtype = item.get("dtype", InputDtype.FLOAT32.value)
    if dtype not in InputDtype.__members__.values():
        raise wrong_type("inputs[0].dtype", f"one of {', '.join(InputDtype)}", dtype)
    elements = _product(dims)
    budget = min(limits.max_input_elements, limits.max_tensor_elements)
    if elements > budget:
        raise ResourceLimitError(
            f"inputs[0].shape: the input holds {elements} elements, over the limit of {budget} "
            "(max_input_elements)", limit="max_input_elements", value=limits.max_input_elements)
    return (InputModel(name=name, shape=dims, dtype=InputDtype(dtype)),)


def _layer_list(raw: Any, path: str, nesting: int, limits: Limits) -> tuple[LayerSpec, ...]:
    if not isinstance(raw, list):
        raise wrong_type(path, "a list of layers", raw)
    if not raw:
        raise InvalidSpecError(path, "needs at least one layer")
    return tuple(_layer(item, f"{path}[{index}]", nesting, limits)
                 for index, item in enumerate(raw))


def _layer(raw: Any, path: str, nesting: int, limits: Limits) -> LayerSpec:
    if not isinstance(raw, dict):
        raise wrong_type(path, 'a layer object like {"type": "Linear", ...}', raw)
    kind = raw.get("type")
    if kind is None:
        raise InvalidSpecError(f"{path}.type", "required")
    if not isinstance(kind, str):
        raise wrong_type(f"{path}.type", "a layer type name (a string)", kind)
    if kind in CONTAINER_TYPES:
        return _container(raw, kind, path, nesting + 1, limits)
    layer_type = LAYER_TYPES.get(kind)
    if layer_type is None:
        raise InvalidSpecError(f"{path}.type", _unknown_type_message(kind))
    return _module(raw, layer_type, path)


def _unknown_type_message(kind: str) -> str:
    names = [*LAYER_TYPES, *CONTAINER_TYPES]
    close = difflib.get_close_matches(kind[:64], names, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    examples = "Linear, Conv2d, LSTM, TransformerEncoderLayer, ReLU, LayerNorm, Residual, Repeat"
    return (f"unknown layer type {describe(kind)}{hint}; allowed types include {examples} "
            f"({len(names)} in all)")


def _container(raw: dict[str, Any], kind: str, path: str, nesting: int,
               limits: Limits) -> LayerSpec:
    if nesting > limits.max_nesting:
        raise ResourceLimitError(
            f"{path}: containers nested {nesting} deep, over the limit of {limits.max_nesting} "
            "(max_nesting)", limit="max_nesting", value=limits.max_nesting)
    keys = ("type", "times", "layers") if kind == "Repeat" else ("type", "layers")
    _check_keys(raw, path, keys, required=keys)
    layers = _layer_list(raw["layers"], f"{path}.layers", nesting, limits)
    if kind == "Repeat":
        # Any count is accepted here; check_budgets compares the expanded size with max_nodes.
        times = Int(high=2**63 - 1).parse_int(raw["times"], f"{path}.times")
        return RepeatSpec(layers=layers, times=times)
    return ResidualSpec(layers=layers) if kind == "Residual" else SequentialSpec(layers=layers)


def _module(raw: dict[str, Any], layer_type: LayerType, path: str) -> ModuleSpec:
    args: dict[str, Any] = {}
    schemes = ("init", "bias_init", "recurrent_init")
    for key, value in raw.items():
        if key == "type" or key in schemes:
            continue
        validator = layer_type.args.get(key) if isinstance(key, str) else None
        if validator is None:
            raise InvalidSpecError(key_path(path, key), _unknown_arg_message(layer_type, key))
        args[key] = validator.parse(value, key_path(path, key))
    for key in layer_type.required:
        if key not in args:
            raise InvalidSpecError(key_path(path, key), f"required by {layer_type.name}")
    complete = layer_type.complete(args)
    layer_type.check(complete, path)
    inits = {key: _layer_init(raw, key, path, layer_type, complete) for key in schemes}
    return ModuleSpec(type=layer_type.name, args=args, **inits)


def _unknown_arg_message(layer_type: LayerType, key: Any) -> str:
    known = ", ".join(layer_type.args) or "no arguments"
    if key == "inplace":
        return ("not accepted: an in-place layer overwrites the output the probe hooks; "
                f"{layer_type.name} takes {known}")
    schemes = ""
    if layer_type.group in (Group.WEIGHTED, Group.NORMALIZATION) or layer_type.name == "PReLU":
        schemes = "; also init, bias_init" + (", recurrent_init" if layer_type.is_recurrent()
                                             else "")
    return f"unknown argument of {layer_type.name} (it takes {known}{schemes})"


def _layer_init(raw: dict[str, Any], key: str, path: str, layer_type: LayerType,
                args: dict[str, Any]) -> InitSpec | None:
    if key not in raw:
        return None
    where = key_path(path, key)
    if key == "init" and isinstance(raw[key], int | float) and layer_type.name == "PReLU":
        raise InvalidSpecError(where, 'in a spec, init is a scheme: write {"scheme": '
                                      '"constant", "value": 0.25} for PReLU\'s initial slope')
    scheme = parse_init(raw[key], where, for_bias=key == "bias_init")
    if layer_type.estimate(args).parameters == 0:
        raise InvalidSpecError(where, f"{layer_type.name} has no parameters to initialize")
    if key == "bias_init" and not layer_type.has_bias(args):
        raise InvalidSpecError(where, f"this {layer_type.name} has no bias")
    if key == "recurrent_init" and not layer_type.is_recurrent():
        raise InvalidSpecError(where, "only RNN, LSTM and GRU have recurrent weights")
    if scheme.scheme in MATRIX_SCHEMES and layer_type.group is not Group.WEIGHTED:
        raise InvalidSpecError(f"{where}.scheme", f"{scheme.scheme} needs a weight matrix; "
                               f"{layer_type.name}'s weights are one-dimensional")
    return scheme


# --- Budgets ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeafUse:
    """A leaf of the spec tree, its JSON path, and how many copies Repeat makes of it."""

    spec: ModuleSpec
    path: str
    copies: int


def iter_leaves(layers: tuple[LayerSpec, ...], path: str = "layers",
                copies: int = 1) -> Iterator[LeafUse]:
    """Every leaf of the spec tree in execution order, without expanding Repeat."""
    for index, layer in enumerate(layers):
        here = f"{path}[{index}]"
        if isinstance(layer, ModuleSpec):
            yield LeafUse(layer, here, copies)
        else:
            times = layer.times if isinstance(layer, RepeatSpec) else 1
            yield from iter_leaves(layer.layers, f"{here}.layers", copies * times)


def count_nodes(layers: tuple[LayerSpec, ...]) -> int:
    """Layers after expanding Repeat: every container and leaf (RNN: per layer and direction)."""
    total = 0
    for layer in layers:
        if isinstance(layer, ModuleSpec):
            layer_type = LAYER_TYPES[layer.type]
            total += layer_type.nodes(layer_type.complete(layer.args))
        else:
            times = layer.times if isinstance(layer, RepeatSpec) else 1
            total += 1 + times * count_nodes(layer.layers)
    return total


def check_budgets(spec: SpecModel, limits: Limits) -> None:
    """Refuse a spec that would exceed ``limits``, by arithmetic alone (nothing is built).

    Raises:
        ResourceLimitError: Too many layers after expanding Repeat (``max_nodes``), too many
            parameter and buffer elements (``max_parameters``), or one tensor too large
            (``max_tensor_elements``). The message names the largest contributor.
    """
    nodes = count_nodes(spec.layers)
    if nodes > limits.max_nodes:
        raise ResourceLimitError(
            f"the spec expands to {_big(nodes)} layers, over the limit of {limits.max_nodes} "
            "(max_nodes)", limit="max_nodes", value=limits.max_nodes)
    total, worst, worst_path = 0, -1, ""
    largest, largest_path = 0, ""
    for leaf in iter_leaves(spec.layers):
        layer_type = LAYER_TYPES[leaf.spec.type]
        estimate = layer_type.estimate(layer_type.complete(leaf.spec.args))
        size = (estimate.parameters + estimate.buffers) * leaf.copies
        total += size
        if size > worst:
            worst, worst_path = size, f"{leaf.path} ({leaf.spec.type})"
        if estimate.largest > largest:
            largest, largest_path = estimate.largest, f"{leaf.path} ({leaf.spec.type})"
    if total > limits.max_parameters:
        raise ResourceLimitError(
            f"the spec needs {_big(total)} parameter and buffer elements, over the limit of "
            f"{limits.max_parameters} (max_parameters); the largest share is {worst_path} with "
            f"{_big(worst)}", limit="max_parameters", value=limits.max_parameters)
    if largest > limits.max_tensor_elements:
        raise ResourceLimitError(
            f"{largest_path} needs a tensor of {_big(largest)} elements, over the limit of "
            f"{limits.max_tensor_elements} (max_tensor_elements)",
            limit="max_tensor_elements", value=limits.max_tensor_elements)


def _big(count: int) -> str:
    # Counts can be astronomically large (nested Repeat): float() would overflow and str() of
    # an int past 4300 digits raises, so scale with integers.
    if count < 10**12:
        return str(count)
    exponent = int(count.bit_length() * 0.30103)
    while 10 ** (exponent + 1) <= count:
        exponent += 1
    while 10**exponent > count:
        exponent -= 1
    return f"{count // 10 ** (exponent - 2) / 100:.2f}e{exponent}"


def _product(dims: tuple[int, ...]) -> int:
    total = 1
    for dim in dims:
        total *= dim
    return total
