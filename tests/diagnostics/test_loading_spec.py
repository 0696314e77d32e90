"""The architecture-spec loader: allowlist, containers, init schemes, names, depth, bad input.

References are independent of the code under test: parameter counts come from the built torch
modules, init statistics from the textbook formulas, residual outputs from plain arithmetic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from diagnostics.errors import InvalidSpecError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.loading.spec.init_schemes import apply_init
from diagnostics.loading.spec.layers import LAYER_TYPES
from diagnostics.loading.spec.loader import build_spec, load_spec, parse_spec
from diagnostics.model import Activation, LayerKind, LoadedModel

EXAMPLES = Path(__file__).parents[2] / "diagnostics" / "examples"


def make_spec(*layers: dict[str, Any], shape: list[int] | None = None, dtype: str = "float32",
              **top: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape or [4, 8], "dtype": dtype}],
            "layers": list(layers), **top}


def run_forward_backward(model: LoadedModel, seed: int = 0) -> torch.Tensor:
    """A real forward and backward pass on a random input of the declared shape."""
    spec = model.inputs[0]
    generator = torch.Generator().manual_seed(seed)
    if spec.dtype == "float32":
        x = torch.randn(spec.shape, generator=generator, requires_grad=True)
    else:
        x = torch.randint(0, spec.vocab or 1, spec.shape, generator=generator,
                          dtype=getattr(torch, spec.dtype))
    y = model.module(x)
    assert isinstance(y, torch.Tensor)
    if y.requires_grad:
        y.float().square().mean().backward()
    return y


# --- Every allowlisted type builds and runs -------------------------------------------------

# type -> (constructor arguments, input shape, input dtype)
SAMPLES: dict[str, tuple[dict[str, Any], list[int], str]] = {
    "Linear": ({"in_features": 6, "out_features": 4}, [3, 6], "float32"),
    "Conv1d": ({"in_channels": 2, "out_channels": 4, "kernel_size": 3, "padding": "same",
                "padding_mode": "reflect"}, [2, 2, 8], "float32"),
    "Conv2d": ({"in_channels": 2, "out_channels": 4, "kernel_size": [3, 2], "stride": 2,
                "groups": 2}, [2, 2, 8, 8], "float32"),
    "Conv3d": ({"in_channels": 2, "out_channels": 3, "kernel_size": 2, "bias": False},
               [2, 2, 4, 4, 4], "float32"),
    "ConvTranspose1d": ({"in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 2,
                         "output_padding": 1}, [2, 2, 5], "float32"),
    "ConvTranspose2d": ({"in_channels": 2, "out_channels": 4, "kernel_size": 2, "groups": 2},
                        [2, 2, 3, 3], "float32"),
    "ConvTranspose3d": ({"in_channels": 1, "out_channels": 2, "kernel_size": [1, 2, 2]},
                        [1, 1, 2, 3, 3], "float32"),
    "BatchNorm1d": ({"num_features": 3}, [4, 3], "float32"),
    "BatchNorm2d": ({"num_features": 3, "momentum": None}, [2, 3, 4, 4], "float32"),
    "BatchNorm3d": ({"num_features": 2, "affine": False}, [2, 2, 3, 3, 3], "float32"),
    "LayerNorm": ({"normalized_shape": [4, 5]}, [2, 4, 5], "float32"),
    "GroupNorm": ({"num_groups": 2, "num_channels": 4}, [2, 4, 3], "float32"),
    "Dropout": ({"p": 0.3}, [2, 5], "float32"),
    "Embedding": ({"num_embeddings": 11, "embedding_dim": 4, "padding_idx": 0}, [2, 5],
                  "int64"),
    "RNN": ({"input_size": 4, "hidden_size": 5, "nonlinearity": "relu", "batch_first": True},
            [2, 3, 4], "float32"),
    "LSTM": ({"input_size": 4, "hidden_size": 5, "num_layers": 2, "bidirectional": True},
             [3, 2, 4], "float32"),
    "GRU": ({"input_size": 4, "hidden_size": 5, "bias": False}, [3, 4], "float32"),
    "TransformerEncoderLayer": ({"d_model": 8, "nhead": 2, "dim_feedforward": 16,
                                 "batch_first": True, "norm_first": True,
                                 "activation": "gelu"}, [2, 5, 8], "float32"),
    "Flatten": ({}, [2, 3, 4], "float32"),
    "Identity": ({}, [2, 3], "float32"),
    "MaxPool1d": ({"kernel_size": 2}, [2, 3, 8], "float32"),
    "MaxPool2d": ({"kernel_size": 2, "stride": 1, "padding": 1}, [2, 3, 5, 5], "float32"),
    "AvgPool1d": ({"kernel_size": 3, "ceil_mode": True}, [2, 3, 8], "float32"),
    "AvgPool2d": ({"kernel_size": 3, "divisor_override": 2}, [2, 3, 5, 5], "float32"),
    "AdaptiveAvgPool1d": ({"output_size": 2}, [2, 3, 8], "float32"),
    "AdaptiveAvgPool2d": ({"output_size": [None, 2]}, [2, 3, 5, 6], "float32"),
    "PReLU": ({"num_parameters": 6}, [4, 6], "float32"),
    "LeakyReLU": ({"negative_slope": 0.1}, [4, 6], "float32"),
    "ELU": ({"alpha": 0.5}, [4, 6], "float32"),
    "CELU": ({"alpha": 2}, [4, 6], "float32"),
    "GELU": ({"approximate": "tanh"}, [4, 6], "float32"),
    "Softplus": ({"beta": 2, "threshold": 10}, [4, 6], "float32"),
    "Hardtanh": ({"min_val": -2, "max_val": 2}, [4, 6], "float32"),
    "Softmax": ({"dim": 1}, [4, 6], "float32"),
    "LogSoftmax": ({}, [4, 6], "float32"),
    **{name: ({}, [4, 6], "float32") for name in (
        "ReLU", "ReLU6", "SELU", "SiLU", "Mish", "Softsign", "Sigmoid", "Tanh", "Hardsigmoid",
        "Hardswish", "LogSigmoid")},
}


def test_samples_cover_the_whole_allowlist() -> None:
    assert set(SAMPLES) == set(LAYER_TYPES)


@pytest.mark.parametrize("layer_type", sorted(SAMPLES))
def test_every_allowlisted_type_builds_and_runs(layer_type: str) -> None:
    args, shape, dtype = SAMPLES[layer_type]
    model = load_spec(make_spec({"type": layer_type, **args}, shape=shape, dtype=dtype))

    y = run_forward_backward(model)

    assert y.dtype == torch.float32
    leaf = model.module.get_submodule("layers.0")
    assert not leaf.training
    assert all(param.grad is not None for param in model.parameters.values())
    assert len(model.parameters) == len(list(model.module.parameters()))
    # The up-front estimate must count exactly what torch then allocates.
    layer = LAYER_TYPES[layer_type]
    estimate = layer.estimate(layer.complete(parse_spec(make_spec(
        {"type": layer_type, **args}, shape=shape, dtype=dtype)).layers[0].args))
    assert estimate.parameters == sum(param.numel() for param in leaf.parameters())
    assert estimate.buffers == sum(buffer.numel() for buffer in leaf.buffers())
    if layer.activation is not None:
        (info,) = model.layers
        assert info.activation is layer.activation
        assert LayerKind.ACTIVATION in info.kinds


@pytest.mark.parametrize(("layer_type", "kinds"), [
    ("Linear", {LayerKind.PARAMETRIC}),
    ("LayerNorm", {LayerKind.PARAMETRIC, LayerKind.NORMALIZATION}),
    ("BatchNorm3d", {LayerKind.NORMALIZATION}),  # affine=False in SAMPLES: no parameters
    ("PReLU", {LayerKind.PARAMETRIC, LayerKind.ACTIVATION}),
    ("Tanh", {LayerKind.ACTIVATION}),
    ("Dropout", None),
    ("MaxPool1d", None),
], ids=lambda value: value if isinstance(value, str) else "")
def test_layer_kinds(layer_type: str, kinds: set[LayerKind] | None) -> None:
    args, shape, dtype = SAMPLES[layer_type]
    model = load_spec(make_spec({"type": layer_type, **args}, shape=shape, dtype=dtype))
    assert [set(info.kinds) for info in model.layers] == ([] if kinds is None else [kinds])


def test_recurrent_layers_pass_on_the_output_sequence() -> None:
    model = load_spec(make_spec(
        {"type": "LSTM", "input_size": 4, "hidden_size": 6, "batch_first": True},
        {"type": "GRU", "input_size": 6, "hidden_size": 3, "batch_first": True},
        shape=[2, 7, 4]))
    assert run_forward_backward(model).shape == (2, 7, 3)
    assert "layers.0.weight_ih_l0" in model.parameters
    assert isinstance(model.module.get_submodule("layers.0"), nn.LSTM)


def test_integer_input_reports_the_embedding_vocabulary() -> None:
    model = load_spec(make_spec(
        {"type": "Embedding", "num_embeddings": 50, "embedding_dim": 8},
        {"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2, "dim_feedforward": 16,
         "dropout": 0.0, "batch_first": True},
        shape=[2, 5], dtype="int64"))
    assert model.inputs[0].vocab == 50
    assert model.inputs[0].dtype == "int64"
    assert "layers.1.self_attn.in_proj_weight" in model.parameters
    assert run_forward_backward(model).shape == (2, 5, 8)


# --- Containers --------------------------------------------------------------------------------

def test_repeat_makes_fresh_parameters_in_every_copy() -> None:
    model = load_spec(make_spec(
        {"type": "Repeat", "times": 3, "layers": [{"type": "Linear", "in_features": 8,
                                                    "out_features": 8}]}))
    weights = [model.parameters[f"layers.0[{copy}].layers.0.weight"] for copy in range(3)]
    assert len({weight.data_ptr() for weight in weights}) == 3
    assert not torch.equal(weights[0], weights[1])
    assert len(model.parameters) == 6


def test_residual_adds_the_input() -> None:
    branch = {"type": "Linear", "in_features": 8, "out_features": 8,
              "init": {"scheme": "constant", "value": 0.5},
              "bias_init": {"scheme": "constant", "value": 1.0}}
    model = load_spec(make_spec({"type": "Residual", "layers": [branch]}))
    x = torch.randn(4, 8)
    expected = x + (0.5 * x.sum(dim=1, keepdim=True) + 1.0)
    torch.testing.assert_close(model.module(x), expected)


def test_sequential_nests() -> None:
    model = load_spec(make_spec({"type": "Sequential", "layers": [
        {"type": "Linear", "in_features": 8, "out_features": 3}, {"type": "Tanh"}]}))
    assert [info.name for info in model.layers] == ["layers.0.layers.0", "layers.0.layers.1"]
    assert model.module(torch.randn(4, 8)).shape == (4, 3)


# --- Names, module paths, depth ---------------------------------------------------------------

NAMING_SPEC = make_spec(
    {"type": "Linear", "in_features": 8, "out_features": 8},
    {"type": "ReLU"},
    {"type": "Residual", "layers": [{"type": "Linear", "in_features": 8, "out_features": 8},
                                    {"type": "Tanh"}]},
    {"type": "Repeat", "times": 2, "layers": [
        {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 8,
                                           "out_features": 8}]},
        {"type": "Sigmoid"}]},
    {"type": "Dropout"},
    {"type": "Linear", "in_features": 8, "out_features": 2},
)


def test_layer_names_module_paths_and_depths() -> None:
    model = load_spec(NAMING_SPEC)
    rows = [(info.name, info.module_path, info.depth) for info in model.layers]
    assert rows == [
        ("layers.0", "layers.0", 8),
        ("layers.1", "layers.1", 7),
        # Inside a Residual the branch counts; the skip path adds nothing.
        ("layers.2.layers.0", "layers.2.layers.0", 6),
        ("layers.2.layers.1", "layers.2.layers.1", 5),
        ("layers.3[0].layers.0.layers.0", "layers.3.0.layers.0.layers.0", 4),
        ("layers.3[0].layers.1", "layers.3.0.layers.1", 3),
        ("layers.3[1].layers.0.layers.0", "layers.3.1.layers.0.layers.0", 2),
        ("layers.3[1].layers.1", "layers.3.1.layers.1", 1),
        ("layers.5", "layers.5", 0),  # Dropout (layers.4) is not watched
    ]
    for info in model.layers:
        assert type(model.module.get_submodule(info.module_path)).__name__ == info.op_type
    assert model.layers[4].parameters == ("layers.3[0].layers.0.layers.0.weight",
                                          "layers.3[0].layers.0.layers.0.bias")
    every_param = [name for info in model.layers for name in info.parameters]
    assert sorted(every_param) == sorted(model.parameters)
    assert model.output_names == ("output",)


def test_model_is_left_in_eval_mode_and_source_is_described() -> None:
    model = load_spec(NAMING_SPEC | {"name": "naming"})
    assert not any(module.training for module in model.module.modules())
    canonical = json.dumps(NAMING_SPEC | {"name": "naming"}, sort_keys=True, separators=(",", ":"))
    assert model.source.kind == "spec"
    assert model.source.name == "naming"
    assert model.source.sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    pretty = json.dumps(NAMING_SPEC | {"name": "naming"}, indent=2)
    assert load_spec(pretty.encode()).source.sha256 == model.source.sha256


# --- Initialization -----------------------------------------------------------------------------

FAN_IN, FAN_OUT = 400, 300


@pytest.mark.parametrize(("scheme", "expected_mean", "expected_std"), [
    ({"scheme": "kaiming_normal", "nonlinearity": "relu"}, 0.0, math.sqrt(2 / FAN_IN)),
    ({"scheme": "kaiming_uniform", "nonlinearity": "relu"}, 0.0, math.sqrt(2 / FAN_IN)),
    ({"scheme": "kaiming_normal", "nonlinearity": "relu", "mode": "fan_out"}, 0.0,
     math.sqrt(2 / FAN_OUT)),
    ({"scheme": "kaiming_normal", "nonlinearity": "leaky_relu", "a": 0.2}, 0.0,
     math.sqrt(2 / (1 + 0.2**2) / FAN_IN)),
    ({"scheme": "xavier_normal"}, 0.0, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ({"scheme": "xavier_uniform", "gain": 2}, 0.0, 2 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ({"scheme": "orthogonal", "gain": 1.5}, 0.0, 1.5 / math.sqrt(FAN_IN)),
    ({"scheme": "normal", "mean": 0.1, "std": 0.05}, 0.1, 0.05),
    ({"scheme": "uniform", "a": -0.3, "b": 0.1}, -0.1, 0.4 / math.sqrt(12)),
    ({"scheme": "constant", "value": 0.7}, 0.7, 0.0),
    # torch's Linear default: kaiming_uniform with a=√5, i.e. U(±1/√fan_in).
    ({"scheme": "default"}, 0.0, 1 / math.sqrt(3 * FAN_IN)),
], ids=lambda value: "-".join(str(v) for v in value.values()) if isinstance(value, dict) else "")
def test_init_scheme_statistics(scheme: dict[str, Any], expected_mean: float,
                                expected_std: float) -> None:
    model = load_spec(make_spec({"type": "Linear", "in_features": FAN_IN,
                                 "out_features": FAN_OUT, "init": scheme}, shape=[2, FAN_IN]))
    weight, bias = model.parameters["layers.0.weight"], model.parameters["layers.0.bias"]
    assert abs(weight.mean().item() - expected_mean) < 0.1 * expected_std + 1e-6
    assert weight.std().item() == pytest.approx(expected_std, rel=0.1, abs=1e-6)
    if scheme["scheme"] == "default":
        assert bias.abs().max() > 0  # torch's default bias is kept
    else:
        assert torch.count_nonzero(bias) == 0  # biases start at zero under any other scheme
    if scheme["scheme"] == "orthogonal":
        torch.testing.assert_close(weight @ weight.T, 2.25 * torch.eye(FAN_OUT),
                                   atol=1e-4, rtol=0)


def test_kaiming_on_a_convolution_uses_the_kernel_in_fan_in() -> None:
    model = load_spec(make_spec(
        {"type": "Conv2d", "in_channels": 16, "out_channels": 64, "kernel_size": 3},
        shape=[1, 16, 5, 5], init={"scheme": "kaiming_normal", "nonlinearity": "relu"}))
    weight = model.parameters["layers.0.weight"]
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.1)


def test_model_wide_init_skips_normalization_and_bias_init_applies() -> None:
    model = load_spec(make_spec(
        {"type": "Embedding", "num_embeddings": 500, "embedding_dim": 64, "padding_idx": 3},
        {"type": "LayerNorm", "normalized_shape": 64},
        {"type": "LSTM", "input_size": 64, "hidden_size": 32,
         "recurrent_init": {"scheme": "orthogonal"}},
        {"type": "LayerNorm", "normalized_shape": 32,
         "init": {"scheme": "constant", "value": 0.5}},
        shape=[2, 5], dtype="int64", init={"scheme": "normal", "std": 0.02},
        bias_init={"scheme": "constant", "value": 0.1}))
    params = model.parameters
    assert params["layers.0.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.count_nonzero(params["layers.0.weight"][3]) == 0  # padding row stays zero
    assert torch.equal(params["layers.1.weight"], torch.ones(64))  # norm keeps its default
    assert torch.equal(params["layers.1.bias"], torch.zeros(64))
    assert params["layers.2.weight_ih_l0"].std().item() == pytest.approx(0.02, rel=0.1)
    hh = params["layers.2.weight_hh_l0"]  # 128 × 32: orthonormal columns
    torch.testing.assert_close(hh.T @ hh, torch.eye(32), atol=1e-4, rtol=0)
    assert torch.all(params["layers.2.bias_ih_l0"] == 0.1)
    assert torch.all(params["layers.3.weight"] == 0.5)
    assert torch.count_nonzero(params["layers.3.bias"]) == 0


def test_transformer_init_touches_attention_and_feed_forward_only() -> None:
    model = load_spec(make_spec(
        {"type": "TransformerEncoderLayer", "d_model": 64, "nhead": 4, "dim_feedforward": 128,
         "init": {"scheme": "normal", "std": 0.02}}, shape=[2, 3, 64]))
    params = model.parameters
    for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight",
                 "linear2.weight"):
        assert params[f"layers.0.{name}"].std().item() == pytest.approx(0.02, rel=0.1)
    for name in ("self_attn.in_proj_bias", "linear1.bias"):
        assert torch.count_nonzero(params[f"layers.0.{name}"]) == 0
    assert torch.equal(params["layers.0.norm1.weight"], torch.ones(64))


def test_seeding_is_reproducible_local_and_per_layer() -> None:
    state = torch.get_rng_state()
    first = load_spec(NAMING_SPEC, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    again = load_spec(NAMING_SPEC, seed=7)
    other = load_spec(NAMING_SPEC, seed=8)
    weight = "layers.0.weight"
    assert torch.equal(first.parameters[weight], again.parameters[weight])
    assert not torch.equal(first.parameters[weight], other.parameters[weight])
    # Editing one layer leaves every other layer's initial weights as they were.
    edited = parse_spec(NAMING_SPEC).to_dict()
    edited["layers"][3]["layers"][1]["type"] = "ReLU"
    rebuilt = build_spec(parse_spec(edited), seed=7)
    for name, param in first.parameters.items():
        torch.testing.assert_close(rebuilt.parameters[name], param, rtol=0, atol=0)


def test_apply_init_is_reusable_on_a_plain_module() -> None:
    layer = nn.Linear(200, 100)
    apply_init(layer, {"scheme": "kaiming_normal", "nonlinearity": "relu"},
               generator=torch.Generator().manual_seed(0))
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.1)
    assert torch.count_nonzero(layer.bias) == 0


def test_parse_round_trips_and_build_revalidates_edits() -> None:
    spec = parse_spec(NAMING_SPEC)
    assert parse_spec(spec.to_dict()) == spec
    broken = spec.model_copy(update={"layers": (
        spec.layers[0].model_copy(update={"args": {"in_features": -1, "out_features": 8}}),
        *spec.layers[1:])})
    with pytest.raises(InvalidSpecError) as caught:
        build_spec(broken)
    assert caught.value.path == "layers[0].in_features"


def test_examples_load() -> None:
    deep = load_spec((EXAMPLES / "deep_sigmoid.json").read_text())
    ops = [info.op_type for info in deep.layers]
    assert ops.count("Linear") == 12
    assert ops.count("Sigmoid") == 12
    assert deep.inputs[0].shape == (16, 64)
    residual = load_spec((EXAMPLES / "residual_relu.json").read_bytes())
    assert "LayerNorm" in {info.op_type for info in residual.layers}
    assert run_forward_backward(residual).shape == (16, 10)


# --- Errors -------------------------------------------------------------------------------------

LINEAR = {"type": "Linear", "in_features": 8, "out_features": 8}


def _nested(depth: int) -> dict[str, Any]:
    layer: dict[str, Any] = {"type": "ReLU"}
    for _ in range(depth):
        layer = {"type": "Sequential", "layers": [layer]}
    return layer


INVALID: list[Any] = [
    pytest.param(make_spec({"type": "Linaer"}), "layers[0].type", "did you mean Linear",
                 id="unknown-type"),
    pytest.param(make_spec({"type": "os.system"}), "layers[0].type", "allowed types include",
                 id="type-is-not-code"),
    pytest.param(make_spec({"type": 3}), "layers[0].type", "string", id="type-not-a-string"),
    pytest.param(make_spec({"in_features": 3}), "layers[0].type", "required", id="missing-type"),
    pytest.param(make_spec(LINEAR | {"out_featurs": 8}), "layers[0].out_featurs",
                 "unknown argument", id="bad-kwarg-name"),
    pytest.param(make_spec(LINEAR, {"type": "ReLU"}, LINEAR, LINEAR | {"out_features": "64"}),
                 "layers[3].out_features", "expected an integer", id="string-where-int"),
    pytest.param(make_spec(LINEAR | {"out_features": True}), "layers[0].out_features",
                 "got true", id="bool-where-int"),
    pytest.param(make_spec(LINEAR | {"out_features": 8.0}), "layers[0].out_features",
                 "expected an integer", id="float-where-int"),
    pytest.param(make_spec(LINEAR | {"out_features": -5}), "layers[0].out_features", "≥ 1",
                 id="negative-width"),
    pytest.param(make_spec(LINEAR | {"out_features": 10**12}), "layers[0].out_features",
                 "≤ 2147483647", id="width-beyond-int32"),
    pytest.param(make_spec(LINEAR | {"out_features": 10**400}), "layers[0].out_features",
                 "1329 bits", id="huge-int-in-dict"),
    pytest.param(make_spec({"type": "Linear", "in_features": 8}), "layers[0].out_features",
                 "required", id="missing-kwarg"),
    pytest.param(make_spec({"type": "ReLU", "inplace": True}), "layers[0].inplace", "in-place",
                 id="inplace"),
    pytest.param(make_spec({"type": "Dropout", "p": 1.5}), "layers[0].p", "≤ 1.0",
                 id="out-of-range-float"),
    pytest.param(make_spec({"type": "Dropout", "p": float("nan")}), "layers[0].p", "finite",
                 id="nan-in-dict"),
    pytest.param(make_spec({"type": "Conv2d", "in_channels": 3, "out_channels": 4,
                            "kernel_size": [3, 3, 3]}), "layers[0].kernel_size", "list of 2",
                 id="kernel-wrong-length"),
    pytest.param(make_spec({"type": "GroupNorm", "num_groups": 3, "num_channels": 8}),
                 "layers[0].num_groups", "divisible", id="groupnorm-divisibility"),
    pytest.param(make_spec({"type": "LSTM", "input_size": 8, "hidden_size": 4, "dropout": 0.5}),
                 "layers[0].dropout", "num_layers > 1", id="rnn-dropout-single-layer"),
    pytest.param(make_spec({"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 3}),
                 "layers[0].nhead", "divisible", id="nhead-divisibility"),
    pytest.param(make_spec({"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2,
                            "activation": "__import__('os')"}), "layers[0].activation",
                 "'relu', 'gelu'", id="activation-not-code"),
    pytest.param(make_spec(LINEAR | {"init": {"scheme": "he"}}), "layers[0].init.scheme",
                 "kaiming_normal", id="unknown-init-scheme"),
    pytest.param(make_spec(LINEAR | {"init": {"scheme": "normal", "gain": 2}}),
                 "layers[0].init.gain", "unknown parameter", id="init-param-of-other-scheme"),
    pytest.param(make_spec(LINEAR | {"init": {"scheme": "normal", "std": -1}}),
                 "layers[0].init.std", "≥ 0", id="negative-std"),
    pytest.param(make_spec({"type": "LayerNorm", "normalized_shape": 8,
                            "init": {"scheme": "xavier_uniform"}}), "layers[0].init.scheme",
                 "one-dimensional", id="matrix-init-on-norm"),
    pytest.param(make_spec({"type": "ReLU", "init": {"scheme": "normal"}}), "layers[0].init",
                 "no parameters", id="init-on-activation"),
    pytest.param(make_spec(LINEAR | {"bias": False, "bias_init": {"scheme": "constant",
                                                                  "value": 1}}),
                 "layers[0].bias_init", "no bias", id="bias-init-without-bias"),
    pytest.param(make_spec(LINEAR | {"bias_init": {"scheme": "orthogonal"}}),
                 "layers[0].bias_init.scheme", "matrix", id="matrix-bias-init"),
    pytest.param(make_spec({"type": "PReLU", "init": 0.1}), "layers[0].init", "constant",
                 id="prelu-torch-init-kwarg"),
    pytest.param(make_spec(LINEAR | {"recurrent_init": {"scheme": "orthogonal"}}),
                 "layers[0].recurrent_init", "only RNN", id="recurrent-init-on-linear"),
    pytest.param([LINEAR], "", "JSON object", id="spec-not-an-object"),
    pytest.param({"inputs": [{"name": "x", "shape": [4, 8]}]}, "layers", "required",
                 id="missing-layers"),
    pytest.param(make_spec(), "layers", "at least one", id="empty-layers"),
    pytest.param(make_spec(LINEAR) | {"layer": []}, "layer", "unknown key",
                 id="unknown-top-level-key"),
    pytest.param({"inputs": [{"name": "x", "shape": [4, 8]}, {"name": "y", "shape": [4, 8]}],
                  "layers": [LINEAR]}, "inputs", "exactly one input", id="two-inputs"),
    pytest.param(make_spec(LINEAR, dtype="float16"), "inputs[0].dtype", "float32",
                 id="bad-dtype"),
    pytest.param(make_spec(LINEAR, shape=[4, 0]), "inputs[0].shape[1]", "≥ 1", id="zero-dim"),
    pytest.param(make_spec({"type": "Repeat", "times": 0, "layers": [LINEAR]}),
                 "layers[0].times", "≥ 1", id="repeat-zero-times"),
    pytest.param(make_spec({"type": "Residual", "layers": [LINEAR], "times": 2}),
                 "layers[0].times", "unknown key", id="residual-with-times"),
    pytest.param(make_spec({"type": "Linear", "in_features": 8, "out_features": 32},
                           {"type": "ReLU"},
                           {"type": "Linear", "in_features": 64, "out_features": 8}),
                 "layers[2]", "from layers[1] (ReLU)", id="shape-mismatch"),
    pytest.param(make_spec({"type": "Residual", "layers": [
        {"type": "Linear", "in_features": 8, "out_features": 4}]}), "layers[0]",
                 "[4, 8] into [4, 4]", id="residual-changes-shape"),
    pytest.param(make_spec({"type": "Conv2d", "in_channels": 3, "out_channels": 4,
                            "kernel_size": 3}), "layers[0]", "cannot take shape [4, 8]",
                 id="conv-on-2d-input"),
    pytest.param(make_spec(LINEAR, dtype="int64"), "layers[0]", "only Embedding",
                 id="ids-into-linear"),
    pytest.param(make_spec({"type": "Embedding", "num_embeddings": 5, "embedding_dim": 4}),
                 "layers[0]", "integer ids", id="floats-into-embedding"),
    pytest.param(make_spec({"type": "Identity"}, dtype="int64"), "layers", "integer ids",
                 id="integer-output"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), INVALID)
def test_invalid_spec_names_the_path(spec: Any, path: str, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        load_spec(spec)
    assert caught.value.path == path
    assert fragment in caught.value.detail
    assert caught.value.to_dict()["error"] == "invalid_spec"


def test_shape_mismatch_names_both_layers_and_shapes() -> None:
    spec = make_spec({"type": "Linear", "in_features": 8, "out_features": 32},
                     {"type": "Linear", "in_features": 64, "out_features": 8}, shape=[16, 8])
    with pytest.raises(InvalidSpecError) as caught:
        load_spec(spec)
    assert caught.value.path == "layers[1]"
    detail = caught.value.detail
    assert "Linear cannot take shape [16, 32] from layers[0] (Linear)" in detail
    assert "64" in detail


def test_shape_mismatch_inside_a_repeat_names_the_copy() -> None:
    spec = make_spec({"type": "Repeat", "times": 3, "layers": [
        {"type": "Linear", "in_features": 8, "out_features": 4}]})
    with pytest.raises(InvalidSpecError) as caught:
        load_spec(spec)
    assert caught.value.path == "layers[0].layers[0]"
    assert ("Linear in copy 1 of layers[0] cannot take shape [4, 4] from layers[0].layers[0] "
            "(Linear in copy 0 of layers[0])") in caught.value.detail


JSON_TEXT_ERRORS = [
    pytest.param('{"inputs": [], "layers": [{"type": "Dropout", "p": NaN}]}', "NaN",
                 id="nan"),
    pytest.param('{"layers": [{"type": "Dropout", "p": -Infinity}]}', "-Infinity",
                 id="infinity"),
    pytest.param('{"layers": [], "layers": []}', "duplicated key", id="duplicate-key"),
    pytest.param('{"layers": [', "not valid JSON", id="truncated"),
    pytest.param("", "not valid JSON", id="empty"),
    pytest.param(b"\xff\xfe{}", "UTF-8", id="not-utf8"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested deeper", id="deep-arrays"),
    pytest.param("[1, 2]", "JSON object", id="array-not-object"),
    pytest.param('"just a string"', "JSON object", id="string-not-object"),
]


@pytest.mark.parametrize(("text", "fragment"), JSON_TEXT_ERRORS)
def test_bad_json_text(text: str | bytes, fragment: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidSpecError) as caught:
        load_spec(text)
    assert fragment in caught.value.detail
    assert time.perf_counter() - started < 1.0


def test_brackets_and_escapes_inside_strings_do_not_count_as_nesting() -> None:
    name = 'a\\"' + "[" * 100 + "\\"
    text = json.dumps(make_spec({"type": "ReLU"}, name=name))
    assert load_spec(text).source.name == name


def test_a_long_string_literal_is_parsed_fast() -> None:
    text = json.dumps(make_spec({"type": "ReLU"}, name="n")).replace('"n"', '"' + "a" * 10**6)
    started = time.perf_counter()
    with pytest.raises(InvalidSpecError):
        load_spec(text)  # unterminated string
    assert time.perf_counter() - started < 1.0


def test_out_of_range_numbers_in_json_name_their_field() -> None:
    huge = "9" * 5000  # beyond CPython's int-conversion limit of 4300 digits
    cases = (('{"type": "Linear", "in_features": 8, "out_features": ' + huge + "}",
              "layers[0].out_features"),
             ('{"type": "Dropout", "p": 1e400}', "layers[0].p"))
    for layer, path in cases:
        text = '{"inputs": [{"name": "x", "shape": [4, 8]}], "layers": [' + layer + "]}"
        with pytest.raises(InvalidSpecError) as caught:
            load_spec(text)
        assert caught.value.path == path
        assert "out of range" in caught.value.detail


def _peak_python_memory(call: Any) -> tuple[BaseException, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        call()
    except (InvalidSpecError, ResourceLimitError) as error:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        return error, elapsed, peak
    finally:
        tracemalloc.stop()
    raise AssertionError("expected the spec to be refused")


RESOURCE = [
    pytest.param(make_spec({"type": "Repeat", "times": 10**9, "layers": [LINEAR]}),
                 "max_nodes", id="repeat-1e9"),
    pytest.param(make_spec({"type": "Repeat", "times": 10**5, "layers": [
        {"type": "Repeat", "times": 10**5, "layers": [LINEAR]}]}), "max_nodes",
                 id="nested-repeat"),
    pytest.param(make_spec({"type": "LSTM", "input_size": 8, "hidden_size": 1,
                            "num_layers": 10**6}, shape=[4, 3, 8]), "max_nodes",
                 id="lstm-million-layers"),
    pytest.param(make_spec({"type": "Linear", "in_features": 10**6, "out_features": 10**6},
                           shape=[4, 10**6]), "max_parameters", id="terabyte-linear"),
    pytest.param(make_spec({"type": "Repeat", "times": 1000, "layers": [
        {"type": "Linear", "in_features": 4096, "out_features": 4096}]}, shape=[4, 4096]),
                 "max_parameters", id="repeat-of-wide-layers"),
    pytest.param(make_spec({"type": "Conv3d", "in_channels": 2**31 - 1,
                            "out_channels": 2**31 - 1, "kernel_size": 2**31 - 1}),
                 "max_parameters", id="conv-beyond-int64"),
    pytest.param(make_spec({"type": "Embedding", "num_embeddings": 2**30, "embedding_dim": 1},
                           shape=[4, 8], dtype="int64"), "max_parameters",
                 id="huge-embedding"),
    pytest.param(make_spec(LINEAR, shape=[100_000, 100_000]), "max_input_elements",
                 id="huge-input"),
    pytest.param(make_spec({"type": "ConvTranspose1d", "in_channels": 1, "out_channels": 1,
                            "kernel_size": 1, "stride": 10**6}, shape=[1, 1, 1000]),
                 "max_tensor_elements", id="huge-activation"),
    pytest.param(make_spec({"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2,
                            "batch_first": True}, shape=[1, 20_000, 8]),
                 "max_tensor_elements", id="huge-attention"),
    pytest.param(make_spec(_nested(1000)), "max_nesting", id="nesting-1000"),
    pytest.param(make_spec(_nested(9)), "max_nesting", id="nesting-9"),
]


@pytest.mark.parametrize(("spec", "limit"), RESOURCE)
def test_resource_limits_refuse_fast_without_allocating(spec: dict[str, Any],
                                                         limit: str) -> None:
    error, elapsed, peak = _peak_python_memory(lambda: load_spec(spec))
    assert isinstance(error, ResourceLimitError), error
    assert error.context["limit"] == limit
    assert limit in error.detail
    assert elapsed < 1.0
    assert peak < 20 * 2**20


def test_nesting_at_the_limit_is_accepted() -> None:
    assert load_spec(make_spec(_nested(8))).layers[0].name.count("layers") == 9


def test_deeply_nested_json_text_is_refused_before_parsing() -> None:
    text = json.dumps(make_spec(_nested(400)))
    with pytest.raises(InvalidSpecError) as caught:
        load_spec(text)
    assert "nested deeper" in caught.value.detail


def test_document_size_limit() -> None:
    limits = Limits(max_nodes=10)
    text = json.dumps(make_spec(LINEAR, name="x" * 20_000))
    with pytest.raises(ResourceLimitError) as caught:
        load_spec(text, limits=limits)
    assert caught.value.context["limit"] == "max_model_bytes"
    many = json.dumps(make_spec(*[{"type": "ReLU"}] * 400))
    with pytest.raises(ResourceLimitError) as caught:
        load_spec(many, limits=limits)
    assert caught.value.context["limit"] == "max_nodes"


# --- Property: nothing but our two errors, whatever a layer holds ------------------------------

SMALL = Limits(max_parameters=50_000, max_nodes=64, max_nesting=3, max_tensor_elements=200_000,
               max_input_elements=10_000)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
PLAUSIBLE = (st.integers(min_value=-2, max_value=9) | st.booleans() | st.none()
             | st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e-5, "same", "valid", "relu", "gelu",
                                "tanh", "none", "zeros", "reflect"])
             | st.lists(st.integers(min_value=-1, max_value=4) | st.none(), max_size=3)
             | st.sampled_from([{"scheme": "normal", "std": 0.1}, {"scheme": "orthogonal"},
                                {"scheme": "constant", "value": 1}]))


@st.composite
def mutated_samples(draw: st.DrawFn) -> tuple[dict[str, Any], list[int], str]:
    """A valid sample layer with a few arguments replaced, dropped or added."""
    name = draw(st.sampled_from(sorted(SAMPLES)))
    args, shape, dtype = SAMPLES[name]
    layer = {"type": name, **args}
    keys = [*LAYER_TYPES[name].args, "init", "bias_init", "recurrent_init", "bogus"]
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)):
        if key in layer and draw(st.booleans()):
            del layer[key]
        else:
            layer[key] = draw(PLAUSIBLE)
    if draw(st.integers(0, 3)) == 0:
        shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    return layer, shape, dtype


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(layer=JSON_VALUES)
def test_arbitrary_json_as_a_layer_raises_only_spec_errors(layer: Any) -> None:
    try:
        load_spec(make_spec(copy.deepcopy(layer)), limits=SMALL)
    except (InvalidSpecError, ResourceLimitError):
        pass


@FUZZ
@given(spec=JSON_VALUES)
def test_arbitrary_json_as_a_spec_raises_only_spec_errors(spec: Any) -> None:
    for source in (spec, json.dumps(spec)):
        try:
            load_spec(source, limits=SMALL)
        except (InvalidSpecError, ResourceLimitError):
            pass


@settings(FUZZ, max_examples=100)
@given(sample=mutated_samples())
def test_mutated_layers_build_or_fail_cleanly_and_run_when_built(
        sample: tuple[dict[str, Any], list[int], str]) -> None:
    """A spec the meta-device check accepts must also run for real."""
    layer, shape, dtype = sample
    try:
        model = load_spec(make_spec(layer, shape=shape, dtype=dtype), limits=SMALL)
    except (InvalidSpecError, ResourceLimitError):
        return
    run_forward_backward(model)


def test_activation_enum_covers_every_activation_type() -> None:
    families = {layer.activation for layer in LAYER_TYPES.values() if layer.activation}
    assert families <= set(Activation)
