"""Files from the exporters users run besides PyTorch's: Keras (tf2onnx), jax2onnx, skl2onnx.

The files and their references are committed (``tests/fixtures/exporters``, made by its
``make_fixtures.py`` in a separate venv: CI never installs TensorFlow or JAX). Each reference
is independent of our converters: the source framework's own forward output and autodiff
(TensorFlow's GradientTape, ``jax.grad``) on a fixed input, onnxruntime's forward output, and for
scikit-learn (no autodiff) its documented MLP formula rebuilt from the fitted weights in float64.
The loss is the mean of squares of the float outputs on both sides.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from diagnostics import diagnose
from diagnostics.loading.onnx import load_onnx
from diagnostics.model import LoadedModel
from tests.onnx_export import loaded_grad_norms, mean_square

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "exporters"
RTOL = 1e-4

# ONNX initializer -> (framework weight names whose gradients it holds, factor). The factor is
# 2 ** 0.5 for tf2onnx's recurrent bias B = [Wb, Rb]: Keras has one bias, the file two equal
# halves (Rb all zero), each getting the gradient Keras's bias gets.
KERAS_HEAD = {
    "functional{n}/head_1/Cast/ReadVariableOp:0": (("head/kernel",), 1.0),
    "functional{n}/head_1/BiasAdd/ReadVariableOp:0": (("head/bias",), 1.0),
}
WEIGHTS: dict[str, dict[str, tuple[tuple[str, ...], float]]] = {
    "keras_lstm": {
        "W0__30": (("lstm/lstm_cell/kernel",), 1.0),
        "R0__31": (("lstm/lstm_cell/recurrent_kernel",), 1.0),
        "B0__32": (("lstm/lstm_cell/bias",), math.sqrt(2)),
        **{k.format(n="_1"): v for k, v in KERAS_HEAD.items()},
    },
    "keras_gru": {  # a Loop over one GRU step; the weights are loop-carried, as Keras has them
        "functional_1_1/gru_1/gru_cell_1/Cast/ReadVariableOp/resource:0":
            (("gru/gru_cell/kernel",), 1.0),
        "functional_1_1/gru_1/gru_cell_1/Cast_1/ReadVariableOp/resource:0":
            (("gru/gru_cell/recurrent_kernel",), 1.0),
        "functional_1_1/gru_1/gru_cell_1/split/ReadVariableOp/resource:0":
            (("gru/gru_cell/bias",), 1.0),
        **{k.format(n="_1_1"): v for k, v in KERAS_HEAD.items()},
    },
    "keras_bilstm": {
        "W__340": (("bilstm/forward_lstm/lstm_cell/kernel",
                    "bilstm/backward_lstm/lstm_cell/kernel"), 1.0),
        "R__341": (("bilstm/forward_lstm/lstm_cell/recurrent_kernel",
                    "bilstm/backward_lstm/lstm_cell/recurrent_kernel"), 1.0),
        "B__342": (("bilstm/forward_lstm/lstm_cell/bias",
                    "bilstm/backward_lstm/lstm_cell/bias"), math.sqrt(2)),
        **{k.format(n="_2_1"): v for k, v in KERAS_HEAD.items()},
    },
    "jax_cnn_bn": {
        "kernel_oih_0": (("conv1/kernel/.value",), 1.0),
        "const_1": (("conv1/bias/.value",), 1.0),
        "const_2": (("bn/scale/.value",), 1.0),
        "const_3": (("bn/bias/.value",), 1.0),
        "kernel_oih_1": (("conv2/kernel/.value",), 1.0),
        "const_7": (("conv2/bias/.value",), 1.0),
        "const_8": (("head/kernel/.value",), 1.0),
        "const_9": (("head/bias/.value",), 1.0),
    },
}
FRAMEWORK_FILES = tuple(WEIGHTS)


@functools.cache
def _loaded(name: str) -> LoadedModel:
    return load_onnx((FIXTURES / f"{name}.onnx").read_bytes(), name=f"{name}.onnx")


def _reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def _first(outputs: torch.Tensor | tuple) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


@pytest.mark.parametrize("name", FRAMEWORK_FILES)
def test_forward_and_gradients_match_the_framework(name: str) -> None:
    loaded, ref = _loaded(name), _reference(name)
    x = torch.from_numpy(ref["input"]).requires_grad_(True)
    output = _first(loaded.module(x))
    np.testing.assert_allclose(output.detach().numpy(), ref["output"], rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(output.detach().numpy(), ref["ort_output"], rtol=RTOL, atol=1e-5)
    mean_square(output).backward()
    np.testing.assert_allclose(x.grad.numpy(), ref["loss_grad_input"], rtol=1e-3, atol=1e-6)

    got = loaded_grad_norms(loaded, (torch.from_numpy(ref["input"]),))
    assert set(got) == set(WEIGHTS[name]), "every weight of the file is a parameter, once"
    for onnx_name, (framework, factor) in WEIGHTS[name].items():
        want = factor * math.sqrt(sum(float(ref[f"grad_norm:{w}"]) ** 2 for w in framework))
        assert got[onnx_name] == pytest.approx(want, rel=1e-3), onnx_name


@pytest.mark.parametrize(("name", "op"), [("keras_lstm", "LSTM"), ("keras_bilstm", "LSTM"),
                                          ("keras_gru", "Loop")])
def test_keras_recurrent_layers_have_a_temporal_profile(name: str, op: str) -> None:
    loaded = _loaded(name)
    (recurrent,) = [layer for layer in loaded.layers if layer.op_type == op]
    assert set(recurrent.parameters) == {n for n in WEIGHTS[name] if "head_1" not in n}
    report = diagnose((FIXTURES / f"{name}.onnx").read_bytes(),
                      config={"samples": 1, "verify_remedies": False})
    (profile,) = report.temporal
    assert profile.input == recurrent.name
    assert len(profile.grad_norms) == 6


def test_jax_stale_annotations_are_dropped_and_named() -> None:
    notes = " ".join(_loaded("jax_cnn_bn").notes)
    assert "value_info" in notes
    assert "re-inferred" in notes


# --- scikit-learn: no autodiff, so its MLP formula from the fitted weights is the reference ---


def _sklearn_reference(name: str) -> tuple[dict[str, np.ndarray], torch.Tensor,
                                           dict[str, torch.Tensor]]:
    ref = _reference(name)
    weights = {key.removeprefix("weight:"): torch.tensor(value, dtype=torch.float64,
                                                         requires_grad=True)
               for key, value in ref.items() if key.startswith("weight:")}
    h = torch.from_numpy(ref["input"]).double()
    layers = len([key for key in weights if key.startswith("coefs_")])
    for i in range(layers):
        h = h @ weights[f"coefs_{i}"] + weights[f"intercepts_{i}"]
        if i < layers - 1:
            h = torch.relu(h)  # MLPClassifier/MLPRegressor's default activation
    if name.endswith("classifier"):
        h = torch.softmax(h, dim=1)  # multi-class output: softmax probabilities
    return ref, h, weights


@pytest.mark.parametrize("name", ["sklearn_mlp_classifier", "sklearn_mlp_regressor"])
def test_sklearn_mlp_gradients_match_its_formula(name: str) -> None:
    loaded = _loaded(name)
    ref, output, weights = _sklearn_reference(name)
    np.testing.assert_allclose(output.detach().numpy(), ref["output"], rtol=1e-5, atol=1e-6)
    mean_square(output).backward()
    got = loaded_grad_norms(loaded, (torch.from_numpy(ref["input"]),))
    # skl2onnx names coefs_i "coefficient{i or ''}" and intercepts_i "intercepts{i or ''}"
    for i in range(len([k for k in weights if k.startswith("coefs_")])):
        suffix = str(i) if i else ""
        for onnx_name, native in ((f"coefficient{suffix}", f"coefs_{i}"),
                                  (f"intercepts{suffix}", f"intercepts_{i}")):
            want = float(weights[native].grad.norm())
            assert got[onnx_name] == pytest.approx(want, rel=1e-4), onnx_name


def test_sklearn_classifier_loss_uses_the_probabilities() -> None:
    loaded = _loaded("sklearn_mlp_classifier")
    assert loaded.output_names == ("out_activations_result",)
    (note,) = [note for note in loaded.notes if "left out of the loss" in note]
    assert "'output_label'" in note
    assert "'output_probability'" in note
    assert "ZipMap" in note
    ref = _reference("sklearn_mlp_classifier")
    with torch.no_grad():
        probabilities = _first(loaded.module(torch.from_numpy(ref["input"])))
    np.testing.assert_allclose(probabilities.numpy(), ref["ort_output"], rtol=1e-5, atol=1e-6)
    report = diagnose((FIXTURES / "sklearn_mlp_classifier.onnx").read_bytes(),
                      config={"samples": 1, "verify_remedies": False})
    assert report.layers


# --- tied weights stored as Identity copies (optimum's ALBERT) ---------------------------------


class _ProjectedAlbert(torch.nn.Module):
    """ALBERT's hidden states through a random projection: mean(y²) of a LayerNorm output with
    unit gain is constant (DOMAIN.md §2b), so the projection gives every weight a real gradient."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AlbertConfig, AlbertModel

        config = AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32,
                              num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                              max_position_embeddings=32)
        self.albert = AlbertModel(config)
        self.projection = torch.nn.Parameter(torch.randn(32, 5))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.albert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden @ self.projection


def _native_source(tensor: torch.Tensor, natives: dict[str, torch.Tensor]) -> str | None:
    """The one native parameter stored as ``tensor`` (as is, or transposed by constant folding)."""
    found = [name for name, param in natives.items()
             if (param.shape == tensor.shape and torch.equal(param, tensor))
             or (param.dim() == 2 and param.T.shape == tensor.shape
                 and torch.equal(param.T, tensor))]
    return found[0] if len(found) == 1 else None


def test_albert_shared_layers_are_one_parameter_with_the_total_gradient() -> None:
    # The legacy exporter with its default constant folding stores ALBERT's shared layers as
    # optimum does: one folded (transposed) tensor per weight, Identity copies for the other
    # layers' uses. Native ALBERT has one Parameter per shared weight: the reference.
    from tests.onnx_export import export_legacy, native_grad_norms

    with torch.random.fork_rng():
        torch.manual_seed(0)
        native = _ProjectedAlbert().eval()
        args = (torch.randint(0, 64, (2, 8)), torch.ones(2, 8, dtype=torch.long))
    data = export_legacy(native, args, input_names=["input_ids", "attention_mask"])
    graph = onnx.load_from_string(data).graph
    stored = {init.name for init in graph.initializer}
    copies = [node for node in graph.node if node.op_type == "Identity" and node.input[0] in stored]
    assert copies, "the export has the Identity deduplication under test"

    loaded = load_onnx(data)
    (note,) = [note for note in loaded.notes if "tied weights" in note]
    assert "gradient is the sum over all its uses" in note
    want = native_grad_norms(native, args)
    got = loaded_grad_norms(loaded, args)
    natives = {name: param.detach() for name, param in native.named_parameters()
               if not bool((param == param.reshape(-1)[0]).all())}  # constants are ambiguous
    compared = 0
    for name, param in loaded.parameters.items():
        source = _native_source(param.detach(), natives)
        if source is None:
            continue
        compared += 1
        assert got[name] == pytest.approx(want[source], rel=1e-3), (name, source)
    shared = [name for name in natives if ".albert_layers.0." in name and "weight" in name]
    assert compared >= len(shared) + 2
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    random_copies = {node.output[0] for node in copies if np.unique(values[node.input[0]]).size > 1}
    assert random_copies, "shared layers' weights are among the copies"
    assert not random_copies & set(loaded.parameters), "each copy reads the stored tensor"


def test_optimum_albert_tied_weights_have_the_native_total_gradient() -> None:
    # optimum's own export (make_optimum_fixtures.py): shared layers as Identity copies of one
    # folded tensor, the decoder tied to the word embeddings through Transpose, and equal
    # constant-valued LayerNorm/bias tensors deduplicated too.
    name = "optimum_albert_mlm"
    loaded, ref = _loaded(name), _reference(name)
    args = tuple(torch.from_numpy(ref[spec.name]) for spec in loaded.inputs)
    with torch.no_grad():
        logits = _first(loaded.module(*args))
    np.testing.assert_allclose(logits.numpy(), ref["logits"], rtol=RTOL, atol=1e-6)
    got = loaded_grad_norms(loaded, args)
    references = {key.removeprefix("grad_norm:"): float(value)
                  for key, value in ref.items() if key.startswith("grad_norm:")}
    assert len(references) == 11
    for initializer, want in references.items():
        assert got[initializer] == pytest.approx(want, rel=1e-4), initializer
    tied = [note for note in loaded.notes if "tied weights" in note]
    constant = [note for note in loaded.notes if "equal constant values" in note]
    assert tied
    assert constant, "LayerNorm ones and zero biases stay separate parameters"
    users = [layer for layer in loaded.layers
             if "albert.embeddings.word_embeddings.weight" in layer.parameters]
    assert len(users) == 2, "the embedding lookup and the tied decoder"
