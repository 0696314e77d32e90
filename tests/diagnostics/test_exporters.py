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

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from diagnostics import diagnose
from diagnostics.loading.onnx.loader import load_onnx
from diagnostics.model import LoadedModel
from diagnostics.report import Status
from tests.exporter_fixtures import (
    SKLEARN,
    WEIGHTS,
    expected_grad_norms,
    model_bytes,
    reference,
    sample_args,
    sklearn_formula,
)
from tests.onnx_export import loaded_grad_norms, mean_square

RTOL = 1e-4
FRAMEWORK_FILES = tuple(WEIGHTS)


@functools.cache
def _loaded(name: str) -> LoadedModel:
    return load_onnx(model_bytes(name), name=f"{name}.onnx")


def _reference(name: str) -> dict[str, np.ndarray]:
    return reference(name)


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
    want = expected_grad_norms(name)
    assert set(got) == set(want), "every weight of the file is a parameter, once"
    for onnx_name, norm in want.items():
        assert got[onnx_name] == pytest.approx(norm, rel=1e-3), onnx_name


@pytest.mark.parametrize(("name", "op"), [("keras_lstm", "LSTM"), ("keras_bilstm", "LSTM"),
                                          ("keras_gru", "Loop")])
def test_keras_recurrent_layers_have_a_temporal_profile(name: str, op: str) -> None:
    loaded = _loaded(name)
    (recurrent,) = [layer for layer in loaded.layers if layer.op_type == op]
    assert set(recurrent.parameters) == {n for n in WEIGHTS[name] if "head_1" not in n}
    report = diagnose(model_bytes(name),
                      config={"samples": 1, "verify_remedies": False})
    (profile,) = report.temporal
    assert profile.input == recurrent.name
    assert len(profile.grad_norms) == 6


def test_a_jax_scan_is_a_recurrent_layer_over_its_carried_sequence() -> None:
    # jax2onnx writes jax.lax.scan as a Loop at opset 23 that carries the whole sequence and
    # reads step t with Gather(sequence, t); the profile is ‖∂L/∂x_t‖ of that sequence, which
    # JAX's own gradient (the npz's loss_grad_input, loss on every step) bounds step by step.
    loaded = _loaded("jax_lstm_scan")
    (loop,) = [layer for layer in loaded.layers if layer.op_type == "Loop"]
    assert set(loop.parameters) == {n for n in WEIGHTS["jax_lstm_scan"]
                                    if n not in ("const_12", "const_13")}
    report = diagnose(model_bytes("jax_lstm_scan"),
                      config={"samples": 1, "verify_remedies": False})
    (profile,) = report.temporal
    assert profile.input == loop.name
    assert len(profile.grad_norms) == 12
    assert report.verdict.status is Status.HEALTHY  # a default-init LSTM, loss on every step


def test_jax_stale_annotations_are_dropped_and_named() -> None:
    notes = " ".join(_loaded("jax_cnn_bn").notes)
    assert "value_info" in notes
    assert "re-inferred" in notes


# --- scikit-learn: no autodiff, so its MLP formula from the fitted weights is the reference ---


@pytest.mark.parametrize("name", SKLEARN)
def test_sklearn_mlp_gradients_match_its_formula(name: str) -> None:
    loaded, ref = _loaded(name), _reference(name)
    output, _ = sklearn_formula(name)
    np.testing.assert_allclose(output.detach().numpy(), ref["output"], rtol=1e-5, atol=1e-6)
    got = loaded_grad_norms(loaded, (torch.from_numpy(ref["input"]),))
    want = expected_grad_norms(name)
    assert set(got) == set(want)
    for onnx_name, norm in want.items():
        assert got[onnx_name] == pytest.approx(norm, rel=1e-4), onnx_name


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
    report = diagnose(model_bytes("sklearn_mlp_classifier"),
                      config={"samples": 1, "verify_remedies": False})
    assert report.layers


# --- tied weights stored as Identity copies (optimum's ALBERT) ---------------------------------


class _ProjectedAlbert(torch.nn.Module):
    """ALBERT's hidden states through a random projection: mean(y²) of a LayerNorm output with
    unit gain is constant (docs/guide/math.md, "Traps in real exports"), so the projection gives
    every weight a real gradient."""

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


@pytest.mark.slow  # exports with the legacy exporter (~12 s); the optimum file below is the CI case
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
    args = sample_args(name, loaded)
    with torch.no_grad():
        logits = _first(loaded.module(*args))
    np.testing.assert_allclose(logits.numpy(), ref["logits"], rtol=RTOL, atol=1e-6)
    got = loaded_grad_norms(loaded, args)
    references = expected_grad_norms(name)
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
