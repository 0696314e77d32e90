"""The allowlist: every torch.nn class a spec may name, with its arguments and sizes.

Each entry says which constructor keywords the class takes (and their types and ranges), which
are required, how many parameter and buffer elements it will hold (computed with Python ints
before anything is allocated, so a terabyte-sized layer is refused by arithmetic), and the
cross-argument rules torch would otherwise enforce with an exception or an assert. A spec's
``type`` is looked up here and nowhere else: nothing in a spec reaches ``getattr(nn, ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from torch import nn

from diagnostics.errors import InvalidSpecError
from diagnostics.loading.spec.args import (
    MAX_DIM,
    MAX_RANK,
    Arg,
    Bool,
    Choice,
    Float,
    Int,
    IntTuple,
    Padding,
    as_tuple,
)
from diagnostics.loading.spec.modules import SequenceGRU, SequenceLSTM, SequenceRNN
from diagnostics.model import Activation


class Group(StrEnum):
    """What a layer is, for init defaults and for which layers the probe watches."""

    WEIGHTED = "weighted"  # has a weight matrix or kernel: the model-wide ``init`` applies
    NORMALIZATION = "normalization"
    ACTIVATION = "activation"
    SHAPE = "shape"  # pooling, dropout, flatten, identity: not watched


@dataclass(frozen=True)
class Estimate:
    """Sizes of one layer, in elements: all parameters, all buffers, the largest tensor."""

    parameters: int = 0
    buffers: int = 0
    largest: int = 0


def _no_check(args: dict[str, Any], path: str) -> None:
    return None


@dataclass(frozen=True)
class LayerType:
    """One allowlisted class.

    Attributes:
        name: The torch.nn class name a spec writes as ``type``.
        factory: Builds the module from keyword arguments.
        args: Accepted keyword -> validator.
        required: Keywords that must be given.
        group: What the layer is.
        activation: Activation family, for activations.
        defaults: torch's defaults for the keywords the estimate and checks read.
        build_defaults: Passed to the constructor when the spec omits them.
        estimate: Sizes from the complete arguments (defaults filled in).
        check: Cross-argument rules; raises InvalidSpecError naming the path.
        nodes: How many layers this counts as against ``max_nodes``.
        has_bias: Whether the built layer has bias tensors.
    """

    name: str
    factory: Callable[..., nn.Module]
    args: Mapping[str, Arg] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    group: Group = Group.SHAPE
    activation: Activation | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    build_defaults: Mapping[str, Any] = field(default_factory=dict)
    estimate: Callable[[dict[str, Any]], Estimate] = lambda args: Estimate()
    check: Callable[[dict[str, Any], str], None] = _no_check
    nodes: Callable[[dict[str, Any]], int] = lambda args: 1
    has_bias: Callable[[dict[str, Any]], bool] = lambda args: False

    def complete(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``args`` with defaults filled in, as the estimate and the checks read them."""
        return {**self.defaults, **self.build_defaults, **args}

    def instantiate(self, args: Mapping[str, Any]) -> nn.Module:
        """Build the module from validated arguments (on the current default device)."""
        return self.factory(**{**self.build_defaults, **args})

    def is_recurrent(self) -> bool:
        """Whether the layer has recurrent weights (and so accepts ``recurrent_init``)."""
        return self.factory in (SequenceRNN, SequenceLSTM, SequenceGRU)


def _sizes(*tensors: int, buffers: int = 0) -> Estimate:
    return Estimate(parameters=sum(tensors), buffers=buffers, largest=max((*tensors, buffers, 0)))


# --- Linear, convolutions -------------------------------------------------------------------

def _linear_size(a: dict[str, Any]) -> Estimate:
    out = a["out_features"]
    return _sizes(a["in_features"] * out, out if a["bias"] else 0)


def _conv_args(dims: int, transposed: bool) -> dict[str, Arg]:
    args: dict[str, Arg] = {
        "in_channels": Int(), "out_channels": Int(), "kernel_size": IntTuple(dims),
        "stride": IntTuple(dims), "dilation": IntTuple(dims), "groups": Int(), "bias": Bool(),
    }
    if transposed:
        args |= {"padding": IntTuple(dims, low=0), "output_padding": IntTuple(dims, low=0)}
    else:
        args |= {"padding": Padding(dims),
                 "padding_mode": Choice(("zeros", "reflect", "replicate", "circular"))}
    return args


def _conv_size(dims: int, transposed: bool) -> Callable[[dict[str, Any]], Estimate]:
    def estimate(a: dict[str, Any]) -> Estimate:
        kernel = math.prod(as_tuple(a["kernel_size"], dims))
        fan = (a["out_channels"] if transposed else a["in_channels"]) // a["groups"]
        other = a["in_channels"] if transposed else a["out_channels"]
        return _sizes(other * fan * kernel, a["out_channels"] if a["bias"] else 0)
    return estimate


def _conv_check(dims: int, transposed: bool) -> Callable[[dict[str, Any], str], None]:
    def check(a: dict[str, Any], path: str) -> None:
        for key in ("in_channels", "out_channels"):
            if a[key] % a["groups"]:
                raise InvalidSpecError(f"{path}.groups",
                                       f"{key}={a[key]} is not divisible by groups={a['groups']}")
        stride = as_tuple(a["stride"], dims)
        if a["padding"] == "same" and any(step != 1 for step in stride):
            raise InvalidSpecError(f"{path}.padding", "'same' needs stride 1")
        if transposed:
            limit = [max(s, d) for s, d in zip(stride, as_tuple(a["dilation"], dims), strict=True)]
            if any(p >= m for p, m in zip(as_tuple(a["output_padding"], dims), limit, strict=True)):
                raise InvalidSpecError(f"{path}.output_padding",
                                       "must be smaller than stride or dilation")
    return check


_CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True,
                  "output_padding": 0}


def _conv(name: str, factory: Callable[..., nn.Module], dims: int, transposed: bool) -> LayerType:
    return LayerType(
        name, factory, _conv_args(dims, transposed),
        required=("in_channels", "out_channels", "kernel_size"), group=Group.WEIGHTED,
        defaults=_CONV_DEFAULTS, estimate=_conv_size(dims, transposed),
        check=_conv_check(dims, transposed), has_bias=lambda a: a["bias"])


# --- Normalization ----------------------------------------------------------------------------

_EPS = Float(low=0.0, open_low=True)


def _batch_norm(name: str, factory: Callable[..., nn.Module]) -> LayerType:
    def estimate(a: dict[str, Any]) -> Estimate:
        channels = a["num_features"]
        affine = channels if a["affine"] else 0
        return _sizes(affine, affine, buffers=2 * channels + 1 if a["track_running_stats"] else 0)
    return LayerType(
        name, factory, {"num_features": Int(), "eps": _EPS,
                        "momentum": Float(0.0, 1.0, nullable=True), "affine": Bool(),
                        "track_running_stats": Bool()},
        required=("num_features",), group=Group.NORMALIZATION,
        defaults={"affine": True, "track_running_stats": True}, estimate=estimate,
        has_bias=lambda a: a["affine"])


def _layer_norm_size(a: dict[str, Any]) -> Estimate:
    shape = a["normalized_shape"]
    count = math.prod(shape) if isinstance(shape, tuple) else shape
    if not a["elementwise_affine"]:
        return Estimate()
    return _sizes(count, count if a["bias"] else 0)


def _group_norm_check(a: dict[str, Any], path: str) -> None:
    if a["num_channels"] % a["num_groups"]:
        raise InvalidSpecError(f"{path}.num_groups", f"num_channels={a['num_channels']} is not "
                                                     f"divisible by num_groups={a['num_groups']}")


# --- Embedding, recurrent, attention ---------------------------------------------------------

def _embedding_check(a: dict[str, Any], path: str) -> None:
    index, rows = a.get("padding_idx"), a["num_embeddings"]
    if index is not None and not -rows <= index < rows:
        raise InvalidSpecError(f"{path}.padding_idx", f"must index a row of the {rows}-row table")


_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def _recurrent(name: str, factory: Callable[..., nn.Module]) -> LayerType:
    gates = _GATES[name]

    def estimate(a: dict[str, Any]) -> Estimate:
        hidden, dirs = a["hidden_size"], 2 if a["bidirectional"] else 1
        bias = 2 * gates * hidden if a["bias"] else 0
        first = gates * hidden * (a["input_size"] + hidden) + bias
        later = gates * hidden * (hidden * dirs + hidden) + bias
        largest = gates * hidden * max(a["input_size"], hidden * dirs, hidden)
        return Estimate(parameters=dirs * (first + (a["num_layers"] - 1) * later),
                        largest=largest)

    def check(a: dict[str, Any], path: str) -> None:
        # torch only warns; the spec says so precisely instead.
        if a.get("dropout", 0.0) > 0 and a["num_layers"] == 1:
            raise InvalidSpecError(f"{path}.dropout", "acts between stacked layers: it needs "
                                                      "num_layers > 1")

    args: dict[str, Arg] = {
        "input_size": Int(), "hidden_size": Int(), "num_layers": Int(), "bias": Bool(),
        "batch_first": Bool(), "dropout": Float(0.0, 1.0), "bidirectional": Bool()}
    if name == "RNN":
        args["nonlinearity"] = Choice(("tanh", "relu"))
    return LayerType(
        name, factory, args, required=("input_size", "hidden_size"), group=Group.WEIGHTED,
        defaults={"num_layers": 1, "bias": True, "bidirectional": False}, estimate=estimate,
        check=check,
        # Each stacked layer and direction is a cell with its own weight tensors.
        nodes=lambda a: a["num_layers"] * (2 if a["bidirectional"] else 1),
        has_bias=lambda a: a["bias"])


def _transformer_size(a: dict[str, Any]) -> Estimate:
    width, hidden, bias = a["d_model"], a["dim_feedforward"], a["bias"]
    weights = 4 * width * width + 2 * width * hidden
    biases = (4 * width + hidden + width) if bias else 0
    norms = 2 * width * (2 if bias else 1)
    return Estimate(parameters=weights + biases + norms,
                    largest=max(3 * width * width, width * hidden))


def _transformer_check(a: dict[str, Any], path: str) -> None:
    if a["d_model"] % a["nhead"]:
        raise InvalidSpecError(f"{path}.nhead",
                               f"d_model={a['d_model']} is not divisible by nhead={a['nhead']}")


# --- Activations and shape-only layers --------------------------------------------------------

def _activation(name: str, factory: Callable[..., nn.Module], family: Activation,
                args: Mapping[str, Arg] | None = None, **extra: Any) -> LayerType:
    return LayerType(name, factory, args or {}, group=Group.ACTIVATION, activation=family,
                     **extra)


def _hardtanh_check(a: dict[str, Any], path: str) -> None:
    if a.get("max_val", 1.0) <= a.get("min_val", -1.0):
        raise InvalidSpecError(f"{path}.max_val", "must be greater than min_val")


def _pool_args(dims: int, average: bool) -> dict[str, Arg]:
    args: dict[str, Arg] = {"kernel_size": IntTuple(dims), "stride": IntTuple(dims, nullable=True),
                            "padding": IntTuple(dims, low=0), "ceil_mode": Bool()}
    if average:
        args["count_include_pad"] = Bool()
        if dims > 1:
            args["divisor_override"] = Int(nullable=True)
    else:
        args["dilation"] = IntTuple(dims)
    return args


_DIM = Int(low=-MAX_RANK, high=MAX_RANK - 1)
_SOFTMAX = {"dim": _DIM}

_TYPES: list[LayerType] = [
    LayerType("Linear", nn.Linear, {"in_features": Int(), "out_features": Int(), "bias": Bool()},
              required=("in_features", "out_features"), group=Group.WEIGHTED,
              defaults={"bias": True}, estimate=_linear_size, has_bias=lambda a: a["bias"]),
    _conv("Conv1d", nn.Conv1d, 1, False),
    _conv("Conv2d", nn.Conv2d, 2, False),
    _conv("Conv3d", nn.Conv3d, 3, False),
    _conv("ConvTranspose1d", nn.ConvTranspose1d, 1, True),
    _conv("ConvTranspose2d", nn.ConvTranspose2d, 2, True),
    _conv("ConvTranspose3d", nn.ConvTranspose3d, 3, True),
    _batch_norm("BatchNorm1d", nn.BatchNorm1d),
    _batch_norm("BatchNorm2d", nn.BatchNorm2d),
    _batch_norm("BatchNorm3d", nn.BatchNorm3d),
    LayerType("LayerNorm", nn.LayerNorm,
              {"normalized_shape": IntTuple(), "eps": _EPS, "elementwise_affine": Bool(),
               "bias": Bool()},
              required=("normalized_shape",), group=Group.NORMALIZATION,
              defaults={"elementwise_affine": True, "bias": True}, estimate=_layer_norm_size,
              has_bias=lambda a: a["elementwise_affine"] and a["bias"]),
    LayerType("GroupNorm", nn.GroupNorm,
              {"num_groups": Int(), "num_channels": Int(), "eps": _EPS, "affine": Bool()},
              required=("num_groups", "num_channels"), group=Group.NORMALIZATION,
              defaults={"affine": True}, check=_group_norm_check,
              estimate=lambda a: _sizes(*(2 * [a["num_channels"] if a["affine"] else 0])),
              has_bias=lambda a: a["affine"]),
    LayerType("Embedding", nn.Embedding,
              {"num_embeddings": Int(), "embedding_dim": Int(),
               "padding_idx": Int(low=-MAX_DIM, nullable=True), "scale_grad_by_freq": Bool()},
              required=("num_embeddings", "embedding_dim"), group=Group.WEIGHTED,
              check=_embedding_check,
              estimate=lambda a: _sizes(a["num_embeddings"] * a["embedding_dim"])),
    _recurrent("RNN", SequenceRNN),
    _recurrent("LSTM", SequenceLSTM),
    _recurrent("GRU", SequenceGRU),
    LayerType("TransformerEncoderLayer", nn.TransformerEncoderLayer,
              {"d_model": Int(), "nhead": Int(), "dim_feedforward": Int(),
               "dropout": Float(0.0, 1.0), "activation": Choice(("relu", "gelu")),
               "layer_norm_eps": _EPS, "batch_first": Bool(), "norm_first": Bool(),
               "bias": Bool()},
              required=("d_model", "nhead"), group=Group.WEIGHTED,
              defaults={"dim_feedforward": 2048, "bias": True}, estimate=_transformer_size,
              check=_transformer_check, has_bias=lambda a: a["bias"]),
    LayerType("Dropout", nn.Dropout, {"p": Float(0.0, 1.0)}),
    LayerType("Flatten", nn.Flatten, {"start_dim": _DIM, "end_dim": _DIM}),
    LayerType("Identity", nn.Identity),
    LayerType("MaxPool1d", nn.MaxPool1d, _pool_args(1, False), required=("kernel_size",)),
    LayerType("MaxPool2d", nn.MaxPool2d, _pool_args(2, False), required=("kernel_size",)),
    LayerType("AvgPool1d", nn.AvgPool1d, _pool_args(1, True), required=("kernel_size",)),
    LayerType("AvgPool2d", nn.AvgPool2d, _pool_args(2, True), required=("kernel_size",)),
    LayerType("AdaptiveAvgPool1d", nn.AdaptiveAvgPool1d, {"output_size": Int()},
              required=("output_size",)),
    LayerType("AdaptiveAvgPool2d", nn.AdaptiveAvgPool2d,
              {"output_size": IntTuple(2, item_nullable=True)}, required=("output_size",)),
    _activation("ReLU", nn.ReLU, Activation.RELU),
    _activation("ReLU6", nn.ReLU6, Activation.RELU6),
    _activation("LeakyReLU", nn.LeakyReLU, Activation.LEAKY_RELU, {"negative_slope": Float()}),
    # PReLU's own ``init`` keyword (the initial slope) is the spec's init scheme instead:
    # {"init": {"scheme": "constant", "value": 0.25}}.
    _activation("PReLU", nn.PReLU, Activation.PRELU, {"num_parameters": Int()},
                defaults={"num_parameters": 1}, estimate=lambda a: _sizes(a["num_parameters"])),
    _activation("ELU", nn.ELU, Activation.ELU, {"alpha": Float(low=0.0)}),
    _activation("SELU", nn.SELU, Activation.SELU),
    _activation("CELU", nn.CELU, Activation.CELU, {"alpha": Float(low=0.0, open_low=True)}),
    _activation("GELU", nn.GELU, Activation.GELU, {"approximate": Choice(("none", "tanh"))}),
    _activation("SiLU", nn.SiLU, Activation.SILU),
    _activation("Mish", nn.Mish, Activation.MISH),
    _activation("Softplus", nn.Softplus, Activation.SOFTPLUS,
                {"beta": Float(low=0.0, open_low=True), "threshold": Float()}),
    _activation("Softsign", nn.Softsign, Activation.SOFTSIGN),
    _activation("Sigmoid", nn.Sigmoid, Activation.SIGMOID),
    _activation("Tanh", nn.Tanh, Activation.TANH),
    _activation("Hardtanh", nn.Hardtanh, Activation.HARDTANH,
                {"min_val": Float(), "max_val": Float()}, check=_hardtanh_check),
    _activation("Hardsigmoid", nn.Hardsigmoid, Activation.HARDSIGMOID),
    _activation("Hardswish", nn.Hardswish, Activation.HARDSWISH),
    _activation("LogSigmoid", nn.LogSigmoid, Activation.LOG_SIGMOID),
    # torch's implicit softmax dimension is deprecated; a spec that omits it means the last axis.
    _activation("Softmax", nn.Softmax, Activation.SOFTMAX, _SOFTMAX, build_defaults={"dim": -1}),
    _activation("LogSoftmax", nn.LogSoftmax, Activation.LOG_SOFTMAX, _SOFTMAX,
                build_defaults={"dim": -1}),
]

LAYER_TYPES: Mapping[str, LayerType] = {layer.name: layer for layer in _TYPES}
CONTAINER_TYPES = ("Sequential", "Repeat", "Residual")


def names_in(group: Group) -> frozenset[str]:
    """The layer types of one group (remedies editing a spec document ask by group)."""
    return frozenset(name for name, layer in LAYER_TYPES.items() if layer.group is group)
