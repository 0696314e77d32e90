"""The labelled verdict suite: architectures whose gradient health is known from the physics
(docs/guide/math.md), diagnosed through the public library call on architecture specs.

Grow it when a model is misjudged: add the case first, then fix the rule for the physics, never
for the case.
"""

import pytest

from diagnostics import diagnose
from tests.spec_builders import cnn_spec, linear, mlp_spec

HE = {"scheme": "kaiming_normal", "nonlinearity": "relu"}

CASES = {
    # --- vanishing -------------------------------------------------------------------------
    "sigmoid-mlp-12": (mlp_spec(12, "Sigmoid"), "vanishing"),
    "tanh-mlp-30-default-init": (mlp_spec(30, "Tanh"), "vanishing"),
    "sigmoid-cnn-10": (cnn_spec(10, "Sigmoid"), "vanishing"),
    "relu-mlp-20-small-init": (mlp_spec(20, "ReLU", init={"scheme": "normal", "std": 0.05}),
                               "vanishing"),
    # --- exploding -------------------------------------------------------------------------
    "relu-mlp-20-large-init": (mlp_spec(20, "ReLU", init={"scheme": "normal", "std": 0.5}),
                               "exploding"),
    "relu-cnn-12-large-init": (cnn_spec(12, "ReLU", init={"scheme": "normal", "std": 0.3}),
                               "exploding"),
    "tanh-mlp-20-large-init": (mlp_spec(20, "Tanh", init={"scheme": "normal", "std": 1.0}),
                               "exploding"),
    # --- healthy ---------------------------------------------------------------------------
    "relu-mlp-20-he": (mlp_spec(20, "ReLU", init=HE), "healthy"),
    "gelu-mlp-16-he": (mlp_spec(16, "GELU", init=HE), "healthy"),
    "tanh-mlp-20-xavier": (mlp_spec(20, "Tanh", init={"scheme": "xavier_normal"}), "healthy"),
    "relu-cnn-10-he": (cnn_spec(10, "ReLU", init={"scheme": "kaiming_normal"}), "healthy"),
    "relu-cnn-10-batchnorm-default-init": (cnn_spec(10, "ReLU", norm=True), "healthy"),
    "linear-30-orthogonal": ({
        "inputs": [{"name": "x", "shape": [16, 64]}], "init": {"scheme": "orthogonal"},
        "layers": [{"type": "Repeat", "times": 30, "layers": [linear(64, 64)]}]}, "healthy"),
    "residual-layernorm-mlp-16": ({
        "inputs": [{"name": "x", "shape": [16, 64]}],
        "layers": [{"type": "Repeat", "times": 16, "layers": [{"type": "Residual", "layers": [
            {"type": "LayerNorm", "normalized_shape": 64}, linear(64, 128, init=HE),
            {"type": "ReLU"}, linear(128, 64)]}]}, linear(64, 10)]}, "healthy"),
    "pre-ln-transformer-6": ({
        "inputs": [{"name": "tokens", "shape": [4, 12, 32]}],
        "layers": [{"type": "Repeat", "times": 6, "layers": [{
            "type": "TransformerEncoderLayer", "d_model": 32, "nhead": 4,
            "dim_feedforward": 64, "dropout": 0.0, "batch_first": True, "norm_first": True}]},
            {"type": "LayerNorm", "normalized_shape": 32}, linear(32, 8)]}, "healthy"),
    "lstm-2-layer": ({
        "inputs": [{"name": "seq", "shape": [4, 20, 16]}],
        "layers": [{"type": "LSTM", "input_size": 16, "hidden_size": 32, "num_layers": 2,
                    "batch_first": True}, linear(32, 5)]}, "healthy"),
    "embedding-gru-classifier": ({
        "inputs": [{"name": "ids", "shape": [4, 12], "dtype": "int64"}],
        "layers": [{"type": "Embedding", "num_embeddings": 100, "embedding_dim": 16},
                   {"type": "GRU", "input_size": 16, "hidden_size": 16, "batch_first": True},
                   linear(16, 3)]}, "healthy"),
}


@pytest.mark.parametrize(("spec", "expected"), list(CASES.values()), ids=list(CASES))
def test_verdict(spec, expected):
    report = diagnose(spec, config={"samples": 2, "verify_remedies": False})
    assert report.verdict.status == expected, report.verdict.summary
    if expected != "healthy":
        assert report.remedies, "an unhealthy verdict comes with remedies"


def test_dead_layer_is_named_and_blocks_the_gradient():
    spec = {"inputs": [{"name": "x", "shape": [16, 32]}],
            "layers": [linear(32, 32, init=HE), {"type": "ReLU"},
                       {"type": "Linear", "in_features": 32, "out_features": 32,
                        "bias_init": {"scheme": "constant", "value": -50.0}},
                       {"type": "ReLU"}, linear(32, 32), {"type": "ReLU"}, linear(32, 4)]}
    report = diagnose(spec, config={"samples": 2})
    assert report.verdict.status == "vanishing"
    assert "dead" in report.verdict.flags
    assert report.verdict.evidence.dead_layers == ["layers.3"]
    assert "layers.3" in report.verdict.summary
    fix = next(r for r in report.remedies if r.id == "fix-dead-units")
    assert "layers.3" in fix.layers


def test_overflow_is_exploding_with_the_first_nonfinite_layer():
    spec = {"inputs": [{"name": "x", "shape": [8, 64]}],
            "init": {"scheme": "normal", "std": 1e9},
            "layers": [linear(64, 64), {"type": "ReLU"}, linear(64, 64), {"type": "ReLU"},
                       linear(64, 64), {"type": "ReLU"}, linear(64, 64), {"type": "ReLU"},
                       linear(64, 4)]}
    report = diagnose(spec, config={"samples": 1})
    assert report.verdict.status == "exploding"
    assert "non_finite" in report.verdict.flags
    assert report.verdict.evidence.first_nonfinite_forward is not None
    report.model_dump_json()  # NaN never reaches JSON
