"""The benchmark's model set: architecture specs in GradDoctor's own JSON spec format.

Each entry is a :class:`BenchModel` — a stable id that says what the model is
(``mlp-tanh-d20-init3x``), its family, the knobs it was built from, and the spec dict that both
the labeller (which trains it) and the scorer (which diagnoses it) load with
``build_spec(parse_spec(spec), seed=0)``: the same module, the same initial weights.

Initialization is given per weighted layer as ``{"scheme": "normal", "std": m · gain/√fan_in}``
where ``m`` is the multiplier in the id (``init0.01x`` … ``init30x``) and ``gain`` is the fan-in
rule of the activation that follows the layer (:data:`GAINS`); a readout layer uses gain 1.
``initdef`` means the spec's ``default`` scheme: the library's own initialization (torch's
kaiming-uniform with a=√5 for Linear/Conv, U(±1/√hidden) for recurrent layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The fan-in rule's gain for the activation after a layer: torch.nn.init.calculate_gain's
# values for sigmoid (1), tanh (5/3) and ReLU (√2); GELU uses He's √2 like ReLU; SELU uses LeCun's
# 1 (the self-normalizing fixed point needs std 1/√fan_in, not torch's 3/4).
GAINS = {"sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0), "gelu": math.sqrt(2.0),
         "selu": 1.0, "linear": 1.0}
_ACTIVATION_TYPES = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU", "gelu": "GELU",
                     "selu": "SELU"}

VECTOR_DIM = 32       # MLP input features
WIDTH = 32            # hidden width of MLPs
CLASSES = 4           # classification tasks' classes
BATCH = 64            # MLP/CNN training batch (also the spec's input batch)
IMAGE = (3, 8, 8)     # CNN input: 3 channels, 8x8
CHANNELS = 8          # CNN hidden channels
MIXER_CHANNELS = 16   # ConvMixer-style nets' channels
RNN_BATCH = 32        # adding-problem batch
RNN_HIDDEN = 32


@dataclass(frozen=True)
class BenchModel:
    """One model of the benchmark.

    Attributes:
        id: Stable, descriptive identifier (``cnn-relu-d10-bn-init3x``).
        family: ``mlp``, ``mlp-norm``, ``mlp-residual``, ``cnn``, ``cnn-norm``, ``cnn-mixer``
            or ``rnn``; the split is stratified by it.
        task: ``teacher-vector``, ``teacher-image`` or ``adding``.
        spec: The architecture spec (a JSON-ready dict).
        knobs: What it was built from (activation, depth, init multiplier, norm, ...).
    """

    id: str
    family: str
    task: str
    spec: dict[str, Any]
    knobs: dict[str, Any] = field(default_factory=dict)


def _init(multiplier: float | None, fan_in: int, gain: float) -> dict[str, Any]:
    if multiplier is None:
        return {"scheme": "default"}
    return {"scheme": "normal", "std": multiplier * gain / math.sqrt(fan_in)}


def _mult_tag(multiplier: float | None) -> str:
    return "initdef" if multiplier is None else f"init{multiplier:g}x"


def _linear(fan_in: int, fan_out: int, multiplier: float | None, gain: float) -> dict[str, Any]:
    return {"type": "Linear", "in_features": fan_in, "out_features": fan_out,
            "init": _init(multiplier, fan_in, gain)}


def mlp(activation: str, depth: int, multiplier: float | None, *, norm: str | None = None,
        residual: bool = False, width: int = WIDTH) -> BenchModel:
    """An MLP with ``depth`` Linear layers (input, ``depth - 2`` hidden, readout).

    ``norm`` (``"bn"``/``"ln"``) puts BatchNorm1d/LayerNorm between each hidden Linear and its
    activation. ``residual`` makes the hidden layers pre-activation blocks
    ``x + Linear(act([norm](x)))`` (``depth - 2`` hidden Linears, one per block). A ``width``
    other than the benchmark's (:data:`WIDTH`) is tagged in the id (``-w128``).
    """
    gain, act = GAINS[activation], {"type": _ACTIVATION_TYPES[activation]}
    norm_layer = ({"type": "BatchNorm1d", "num_features": width} if norm == "bn" else
                  {"type": "LayerNorm", "normalized_shape": width} if norm == "ln" else None)
    hidden_linear = _linear(width, width, multiplier, gain)
    if residual:
        block = [*([norm_layer] if norm_layer else []), act, hidden_linear]
        hidden: dict[str, Any] = {"type": "Residual", "layers": block}
    else:
        hidden = {"type": "Sequential",
                  "layers": [hidden_linear, *([norm_layer] if norm_layer else []), act]}
    layers: list[dict[str, Any]] = [_linear(VECTOR_DIM, width, multiplier, gain), act]
    if depth > 2:
        layers.append({"type": "Repeat", "times": depth - 2, "layers": [hidden]})
    layers.append(_linear(width, CLASSES, multiplier, GAINS["linear"]))
    parts = ["mlp", activation, f"d{depth}", *([norm] if norm else []),
             *(["res"] if residual else []), *([f"w{width}"] if width != WIDTH else []),
             _mult_tag(multiplier)]
    family = "mlp-residual" if residual else "mlp-norm" if norm else "mlp"
    ident = "-".join(parts)
    spec = {"name": ident, "inputs": [{"name": "x", "shape": [BATCH, VECTOR_DIM]}],
            "layers": layers}
    return BenchModel(ident, family, "teacher-vector", spec,
                      {"activation": activation, "depth": depth, "init": multiplier,
                       "norm": norm, "residual": residual,
                       **({"width": width} if width != WIDTH else {})})


def cnn(activation: str, depth: int, multiplier: float | None, *,
        norm: bool = False, channels: int = CHANNELS) -> BenchModel:
    """A CNN of ``depth - 1`` 3x3 convolutions (padding 1, 8 channels) and a Linear readout.
    Other ``channels`` are tagged in the id (``-c32``)."""
    gain, act = GAINS[activation], {"type": _ACTIVATION_TYPES[activation]}
    in_channels, height, width = IMAGE

    def conv(cin: int) -> list[dict[str, Any]]:
        layer = {"type": "Conv2d", "in_channels": cin, "out_channels": channels,
                 "kernel_size": 3, "padding": 1, "init": _init(multiplier, cin * 9, gain)}
        bn = [{"type": "BatchNorm2d", "num_features": channels}] if norm else []
        return [layer, *bn, act]

    layers: list[dict[str, Any]] = conv(in_channels)
    if depth > 2:
        layers.append({"type": "Repeat", "times": depth - 2, "layers": conv(channels)})
    layers += [{"type": "Flatten"},
               _linear(channels * height * width, CLASSES, multiplier, GAINS["linear"])]
    ident = "-".join(["cnn", activation, f"d{depth}", *(["bn"] if norm else []),
                      *([f"c{channels}"] if channels != CHANNELS else []),
                      _mult_tag(multiplier)])
    spec = {"name": ident, "inputs": [{"name": "x", "shape": [BATCH, *IMAGE]}],
            "layers": layers}
    return BenchModel(ident, "cnn-norm" if norm else "cnn", "teacher-image", spec,
                      {"activation": activation, "depth": depth, "init": multiplier,
                       "norm": "bn" if norm else None, "residual": False,
                       **({"channels": channels} if channels != CHANNELS else {})})


def mixer(activation: str, depth: int, multiplier: float | None, *,
          channels: int = MIXER_CHANNELS) -> BenchModel:
    """A ConvMixer-style CNN (Trockman & Kolter 2022) with ``depth`` blocks: a 1x1 stem, then
    blocks ``x + BN(act(depthwise 3x3(x)))`` -> ``BN(act(pointwise 1x1))``, and a Linear readout
    on the flattened map (the task needs where things are, which a global pool would lose).

    Each BatchNorm sits *after* its activation, and only the depthwise half is residual, so the
    backward signal grows at every block (timm's ``convmixer_768_32``: 2.6e4 over 32 blocks)
    while every convolution's output reaches the loss only through a BatchNorm.
    """
    gain, act = GAINS[activation], {"type": _ACTIVATION_TYPES[activation]}
    in_channels, height, width = IMAGE

    def norm() -> dict[str, Any]:
        return {"type": "BatchNorm2d", "num_features": channels}

    depthwise = {"type": "Conv2d", "in_channels": channels, "out_channels": channels,
                 "kernel_size": 3, "padding": 1, "groups": channels,
                 "init": _init(multiplier, 9, gain)}
    pointwise = {"type": "Conv2d", "in_channels": channels, "out_channels": channels,
                 "kernel_size": 1, "init": _init(multiplier, channels, gain)}
    layers: list[dict[str, Any]] = [
        {"type": "Conv2d", "in_channels": in_channels, "out_channels": channels,
         "kernel_size": 1, "init": _init(multiplier, in_channels, gain)}, act, norm(),
        {"type": "Repeat", "times": depth, "layers": [
            {"type": "Residual", "layers": [depthwise, act, norm()]}, pointwise, act, norm()]},
        {"type": "Flatten"},
        _linear(channels * height * width, CLASSES, multiplier, GAINS["linear"])]
    tag = f"-c{channels}" if channels != MIXER_CHANNELS else ""
    ident = f"mixer-{activation}-d{depth}{tag}-{_mult_tag(multiplier)}"
    spec = {"name": ident, "inputs": [{"name": "x", "shape": [BATCH, *IMAGE]}],
            "layers": layers}
    return BenchModel(ident, "cnn-mixer", "teacher-image", spec,
                      {"activation": activation, "depth": depth, "init": multiplier,
                       "norm": "bn-after-activation", "residual": "depthwise",
                       **({"channels": channels} if channels != MIXER_CHANNELS else {})})


def rnn(cell: str, steps: int, multiplier: float | None, *,
        recurrent: str | None = None) -> BenchModel:
    """A one-layer recurrent net (RNN tanh, LSTM or GRU, hidden 32) and a Linear readout.

    Input ``[B, T, 2]`` (the adding problem); the spec's output is ``[B, T, 1]`` and training
    uses the last step. ``multiplier`` scales the fan-in rule (gain 1, fan-in = hidden size) of
    every recurrent-layer weight; ``recurrent="orthogonal"`` instead makes the hidden-to-hidden
    weights orthogonal (gain 1), input weights by the fan-in rule.
    """
    layer: dict[str, Any] = {"type": cell, "input_size": 2, "hidden_size": RNN_HIDDEN,
                             "batch_first": True}
    if recurrent == "orthogonal":
        layer["init"] = _init(1.0, 2, 1.0)
        layer["recurrent_init"] = {"scheme": "orthogonal", "gain": 1.0}
    else:
        layer["init"] = _init(multiplier, RNN_HIDDEN, 1.0)
    readout = _linear(RNN_HIDDEN, 1, None if multiplier is None else 1.0, 1.0)
    tag = "orth" if recurrent == "orthogonal" else _mult_tag(multiplier)
    ident = f"{cell.lower()}-t{steps}-{tag}"
    spec = {"name": ident, "inputs": [{"name": "x", "shape": [RNN_BATCH, steps, 2]}],
            "layers": [layer, readout]}
    return BenchModel(ident, "rnn", "adding", spec,
                      {"cell": cell, "steps": steps, "init": multiplier,
                       "recurrent_init": recurrent})


_ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu", "selu")
# Plain MLPs: per activation, shallow to deep, tiny to huge initial scale, and torch's default.
_MLP_GRID: tuple[tuple[int, float | None], ...] = (
    (2, 30.0), (4, 1.0), (10, 0.1), (10, 3.0), (10, 10.0), (20, 1.0), (20, 0.3), (30, None))
_NORM_GRID: tuple[tuple[str, str, int, float | None], ...] = (
    ("relu", "bn", 20, 3.0), ("tanh", "bn", 20, 0.1), ("sigmoid", "bn", 30, 1.0),
    ("relu", "ln", 20, 3.0), ("tanh", "ln", 20, 0.1), ("gelu", "ln", 30, None))
_RESIDUAL_GRID: tuple[tuple[str, str | None, int, float | None], ...] = (
    ("relu", None, 20, 1.0), ("relu", None, 30, 3.0), ("tanh", None, 20, 0.01),
    ("relu", "ln", 30, 1.0), ("gelu", "ln", 30, None), ("sigmoid", "ln", 20, 10.0))
_CNN_GRID: tuple[tuple[str, int, float | None], ...] = (
    ("relu", 4, 1.0), ("relu", 10, 3.0), ("relu", 10, 0.1), ("relu", 16, None),
    ("tanh", 4, 1.0), ("tanh", 10, 10.0), ("tanh", 16, 0.3),
    ("sigmoid", 4, 1.0), ("sigmoid", 10, 1.0), ("sigmoid", 20, None),
    ("gelu", 10, 1.0), ("gelu", 16, 0.01), ("selu", 10, 1.0), ("selu", 10, 3.0))
_CNN_NORM_GRID: tuple[tuple[str, int, float | None], ...] = (
    ("relu", 20, 3.0), ("tanh", 20, 0.1), ("sigmoid", 10, None), ("relu", 10, 30.0))
# ConvMixer-style: BatchNorm after the activation (added 2026-12-05, for the scale-invariance
# rule: nets whose backward signal grows through normalized layers, labelled by training).
_MIXER_GRID: tuple[tuple[str, int, float | None], ...] = (
    ("relu", 32, None), ("relu", 32, 1.0), ("relu", 32, 3.0), ("relu", 16, None),
    ("gelu", 32, None), ("gelu", 32, 0.1), ("tanh", 32, None), ("sigmoid", 32, None))
_RNN_GRID: tuple[tuple[str, int, float | None, str | None], ...] = (
    ("RNN", 50, None, None), ("RNN", 50, 1.0, "orthogonal"), ("RNN", 50, 0.1, None),
    ("RNN", 50, 3.0, None), ("RNN", 100, None, None),
    ("LSTM", 50, None, None), ("LSTM", 100, None, None), ("LSTM", 50, 0.1, None),
    ("LSTM", 50, 10.0, None),
    ("GRU", 50, None, None), ("GRU", 50, 0.1, None),
    ("GRU", 50, 10.0, None))


def all_models() -> list[BenchModel]:
    """Every model of the benchmark, in a fixed order (ids are unique)."""
    models = [mlp(act, depth, mult) for act in _ACTIVATIONS for depth, mult in _MLP_GRID]
    models += [mlp(act, depth, mult, norm=norm) for act, norm, depth, mult in _NORM_GRID]
    models += [mlp(act, depth, mult, norm=norm, residual=True)
               for act, norm, depth, mult in _RESIDUAL_GRID]
    models += [cnn(act, depth, mult) for act, depth, mult in _CNN_GRID]
    models += [cnn(act, depth, mult, norm=True) for act, depth, mult in _CNN_NORM_GRID]
    models += [rnn(cell, steps, mult, recurrent=rec) for cell, steps, mult, rec in _RNN_GRID]
    models += [mixer(act, depth, mult) for act, depth, mult in _MIXER_GRID]
    ids = [model.id for model in models]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise AssertionError(f"duplicate benchmark ids: {repeated}")
    return models


def by_id() -> dict[str, BenchModel]:
    """The model set keyed by id."""
    return {model.id: model for model in all_models()}
