"""Weight-initialization schemes: the spec's ``init`` objects, validated and applied.

A scheme is a JSON object ``{"scheme": NAME, ...parameters}``:

============== ============================================ ==========================
scheme         parameters (torch's defaults when omitted)   torch function
============== ============================================ ==========================
default        —  (leaves the tensor as torch built it)     ``reset_parameters``
xavier_uniform ``gain`` (1)                                 ``nn.init.xavier_uniform_``
xavier_normal  ``gain`` (1)                                 ``nn.init.xavier_normal_``
kaiming_*      ``nonlinearity`` (leaky_relu), ``mode``       ``nn.init.kaiming_*_``
               (fan_in), ``a`` (0)
orthogonal     ``gain`` (1)                                 ``nn.init.orthogonal_``
normal         ``mean`` (0), ``std`` (1)                    ``nn.init.normal_``
uniform        ``a`` (0), ``b`` (1)                         ``nn.init.uniform_``
constant       ``value`` (required)                         ``nn.init.constant_``
============== ============================================ ==========================

:func:`apply_init` is a plain function of a module and schemes, so remedies can re-initialize
a built model with the same code the spec loader uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from diagnostics.errors import InvalidSpecError
from diagnostics.loading.spec.args import Arg, Choice, Float, key_path, wrong_type


class InitScheme(StrEnum):
    """The initialization schemes a spec can name."""

    DEFAULT = "default"
    XAVIER_UNIFORM = "xavier_uniform"
    XAVIER_NORMAL = "xavier_normal"
    KAIMING_UNIFORM = "kaiming_uniform"
    KAIMING_NORMAL = "kaiming_normal"
    ORTHOGONAL = "orthogonal"
    NORMAL = "normal"
    UNIFORM = "uniform"
    CONSTANT = "constant"


# Schemes that derive a scale from fan-in/fan-out or factor a matrix: they need a tensor of at
# least two dimensions, so never a bias, a norm's scale or PReLU's slopes.
MATRIX_SCHEMES = frozenset({
    InitScheme.XAVIER_UNIFORM, InitScheme.XAVIER_NORMAL, InitScheme.KAIMING_UNIFORM,
    InitScheme.KAIMING_NORMAL, InitScheme.ORTHOGONAL,
})

_NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                   "conv_transpose2d", "conv_transpose3d", "sigmoid", "tanh", "relu",
                   "leaky_relu", "selu")
_GAIN: dict[str, Arg] = {"gain": Float(low=0.0, open_low=True)}
_KAIMING: dict[str, Arg] = {"nonlinearity": Choice(_NONLINEARITIES),
                            "mode": Choice(("fan_in", "fan_out")), "a": Float(low=0.0)}
_PARAMETERS: dict[InitScheme, dict[str, Arg]] = {
    InitScheme.DEFAULT: {},
    InitScheme.XAVIER_UNIFORM: _GAIN,
    InitScheme.XAVIER_NORMAL: _GAIN,
    InitScheme.KAIMING_UNIFORM: _KAIMING,
    InitScheme.KAIMING_NORMAL: _KAIMING,
    InitScheme.ORTHOGONAL: _GAIN,
    InitScheme.NORMAL: {"mean": Float(), "std": Float(low=0.0)},
    InitScheme.UNIFORM: {"a": Float(), "b": Float()},
    InitScheme.CONSTANT: {"value": Float()},
}


class InitSpec(BaseModel):
    """One validated ``init`` object; fields a scheme does not use stay None."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: InitScheme
    gain: float | None = None
    nonlinearity: str | None = None
    mode: str | None = None
    a: float | None = None
    b: float | None = None
    mean: float | None = None
    std: float | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The scheme as the spec writes it (omitted parameters left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def parse_init(raw: Any, path: str, *, for_bias: bool = False) -> InitSpec:
    """Validate an ``init`` (or ``bias_init``) object.

    Args:
        raw: The JSON value, e.g. ``{"scheme": "kaiming_normal", "nonlinearity": "relu"}``.
        path: Its JSON path, for error messages (``layers[2].init``).
        for_bias: Refuse schemes that need a matrix (a bias is one-dimensional).

    Returns:
        The validated scheme.

    Raises:
        InvalidSpecError: Not an object, unknown scheme, unknown or ill-typed parameter.
    """
    if not isinstance(raw, dict):
        raise wrong_type(path, 'an object like {"scheme": "kaiming_normal"}', raw)
    name = raw.get("scheme")
    if name is None:
        raise InvalidSpecError(f"{path}.scheme", "required")
    if not isinstance(name, str) or name not in InitScheme.__members__.values():
        raise wrong_type(f"{path}.scheme", f"one of {', '.join(InitScheme)}", name)
    scheme = InitScheme(name)
    if for_bias and scheme in MATRIX_SCHEMES:
        raise InvalidSpecError(f"{path}.scheme", f"{scheme} needs a weight matrix; a bias "
                                                 "takes default, normal, uniform or constant")
    allowed = _PARAMETERS[scheme]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "scheme":
            continue
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidSpecError(key_path(path, key),
                                   f"unknown parameter of scheme {scheme} (it takes: {known})")
        values[key] = allowed[key].parse(value, f"{path}.{key}")
    if scheme is InitScheme.CONSTANT and "value" not in values:
        raise InvalidSpecError(f"{path}.value", "required by scheme constant")
    if scheme is InitScheme.UNIFORM and values.get("a", 0.0) > values.get("b", 1.0):
        raise InvalidSpecError(f"{path}.b", "must be ≥ a")
    return InitSpec(scheme=scheme, **values)


@dataclass
class InitTargets:
    """The tensors of one module that an init scheme touches, by role."""

    weights: list[torch.Tensor] = field(default_factory=list)
    recurrent: list[torch.Tensor] = field(default_factory=list)
    biases: list[torch.Tensor] = field(default_factory=list)


def init_targets(module: nn.Module) -> InitTargets:
    """Which of ``module``'s own tensors are weights, recurrent weights and biases.

    Recurrent layers: ``weight_ih_*`` (and ``weight_hr_*``) are weights, ``weight_hh_*`` are
    recurrent. A TransformerEncoderLayer's attention projections and feed-forward matrices are
    weights; its LayerNorms keep their own values. Everything else: ``weight`` and ``bias``.
    """
    targets = InitTargets()
    if isinstance(module, nn.RNNBase):
        for name, param in module.named_parameters():
            role = (targets.biases if name.startswith("bias")
                    else targets.recurrent if name.startswith("weight_hh") else targets.weights)
            role.append(param)
    elif isinstance(module, nn.TransformerEncoderLayer):
        _add_attention(module.self_attn, targets)
        for linear in (module.linear1, module.linear2):
            _add_weight_bias(linear, targets)
    elif isinstance(module, nn.MultiheadAttention):
        _add_attention(module, targets)
    else:
        _add_weight_bias(module, targets)
    return targets


def _add_attention(attention: nn.MultiheadAttention, targets: InitTargets) -> None:
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        if isinstance(getattr(attention, name, None), nn.Parameter):
            targets.weights.append(getattr(attention, name))
    if isinstance(attention.in_proj_bias, nn.Parameter):
        targets.biases.append(attention.in_proj_bias)
    _add_weight_bias(attention.out_proj, targets)


def _add_weight_bias(module: nn.Module, targets: InitTargets) -> None:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(weight, nn.Parameter):
        targets.weights.append(weight)
    if isinstance(bias, nn.Parameter):
        targets.biases.append(bias)


def init_tensor_(tensor: torch.Tensor, init: InitSpec,
                 generator: torch.Generator | None = None) -> None:
    """Fill ``tensor`` in place by ``init`` (``default`` leaves it unchanged).

    Raises:
        InvalidSpecError: A matrix scheme given a tensor of fewer than two dimensions.
    """
    scheme = init.scheme
    if scheme in MATRIX_SCHEMES and tensor.dim() < 2:
        raise InvalidSpecError("init", f"{scheme} needs a tensor of at least 2 dimensions, "
                                       f"got shape {list(tensor.shape)}")
    kaiming: dict[str, Any] = {key: value for key, value in
               (("a", init.a), ("mode", init.mode), ("nonlinearity", init.nonlinearity))
               if value is not None}
    gain = 1.0 if init.gain is None else init.gain
    with torch.no_grad():
        if scheme is InitScheme.XAVIER_UNIFORM:
            nn.init.xavier_uniform_(tensor, gain=gain, generator=generator)
        elif scheme is InitScheme.XAVIER_NORMAL:
            nn.init.xavier_normal_(tensor, gain=gain, generator=generator)
        elif scheme is InitScheme.KAIMING_UNIFORM:
            nn.init.kaiming_uniform_(tensor, **kaiming, generator=generator)
        elif scheme is InitScheme.KAIMING_NORMAL:
            nn.init.kaiming_normal_(tensor, **kaiming, generator=generator)
        elif scheme is InitScheme.ORTHOGONAL:
            nn.init.orthogonal_(tensor, gain=gain, generator=generator)
        elif scheme is InitScheme.NORMAL:
            nn.init.normal_(tensor, mean=init.mean or 0.0,
                            std=1.0 if init.std is None else init.std, generator=generator)
        elif scheme is InitScheme.UNIFORM:
            nn.init.uniform_(tensor, a=init.a or 0.0, b=1.0 if init.b is None else init.b,
                             generator=generator)
        elif scheme is InitScheme.CONSTANT:
            nn.init.constant_(tensor, init.value or 0.0)


def apply_init(module: nn.Module, init: InitSpec | Mapping[str, Any] | None = None, *,
               bias_init: InitSpec | Mapping[str, Any] | None = None,
               recurrent_init: InitSpec | Mapping[str, Any] | None = None,
               generator: torch.Generator | None = None) -> None:
    """Initialize one layer's own tensors in place.

    Rules: ``init`` sets the weights (and the recurrent weights unless ``recurrent_init`` is
    given); once any non-default scheme has set weights, the biases start at zero unless
    ``bias_init`` says otherwise; ``default`` keeps what torch built. An Embedding's
    ``padding_idx`` row stays zero, as torch keeps it.

    Args:
        module: One layer (Linear, Conv*, RNN/LSTM/GRU, TransformerEncoderLayer, a norm ...).
        init: Scheme for the weights, an :class:`InitSpec` or its JSON object.
        bias_init: Scheme for the biases.
        recurrent_init: Scheme for recurrent (hidden-to-hidden) weights only.
        generator: Source of randomness; None uses torch's global generator.

    Raises:
        InvalidSpecError: A scheme object is invalid, or a matrix scheme meets a 1-D tensor.
    """
    init, bias_init, recurrent_init = (
        _as_init(scheme, name, for_bias=name == "bias_init") for scheme, name in
        ((init, "init"), (bias_init, "bias_init"), (recurrent_init, "recurrent_init")))
    targets = init_targets(module)
    weights = targets.weights + (targets.recurrent if recurrent_init is None else [])
    touched = False
    for scheme, tensors in ((init, weights), (recurrent_init, targets.recurrent)):
        if scheme is not None and scheme.scheme is not InitScheme.DEFAULT:
            for tensor in tensors:
                init_tensor_(tensor, scheme, generator)
            touched = touched or bool(tensors)
    if bias_init is not None:
        for tensor in targets.biases:
            init_tensor_(tensor, bias_init, generator)
    elif touched:
        with torch.no_grad():
            for tensor in targets.biases:
                tensor.zero_()
    if touched and isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


def _as_init(scheme: InitSpec | Mapping[str, Any] | None, path: str, *,
             for_bias: bool) -> InitSpec | None:
    if scheme is None or isinstance(scheme, InitSpec):
        return scheme
    return parse_init(dict(scheme), path, for_bias=for_bias)
