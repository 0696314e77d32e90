"""The committed files of other exporters (``tests/fixtures/exporters``) and their references.

Shared by ``tests/diagnostics/test_exporters.py`` and ``scripts/model_coverage.py``. Every
reference is independent of GradDoctor's converters: the source framework's forward output and
autodiff (TensorFlow, JAX, PyTorch for optimum's ALBERT) stored by the generator scripts, or for
scikit-learn (no autodiff) its MLP formula rebuilt here from the fitted weights in float64. The
loss is the mean of squares of the float outputs, as in :func:`tests.onnx_export.mean_square`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from diagnostics.model import LoadedModel
from tests.onnx_export import mean_square

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"

# ONNX initializer -> (framework weight names whose gradients it holds, factor). The factor is
# 2 ** 0.5 for tf2onnx's recurrent bias B = [Wb, Rb]: Keras has one bias, the file two equal
# halves (Rb all zero), each getting the gradient Keras's bias gets.
_KERAS_HEAD = {
    "functional{n}/head_1/Cast/ReadVariableOp:0": (("head/kernel",), 1.0),
    "functional{n}/head_1/BiasAdd/ReadVariableOp:0": (("head/bias",), 1.0),
}
WEIGHTS: dict[str, dict[str, tuple[tuple[str, ...], float]]] = {
    "keras_lstm": {
        "W0__30": (("lstm/lstm_cell/kernel",), 1.0),
        "R0__31": (("lstm/lstm_cell/recurrent_kernel",), 1.0),
        "B0__32": (("lstm/lstm_cell/bias",), math.sqrt(2)),
        **{k.format(n="_1"): v for k, v in _KERAS_HEAD.items()},
    },
    "keras_gru": {  # a Loop over one GRU step; the weights are loop-carried, as Keras has them
        "functional_1_1/gru_1/gru_cell_1/Cast/ReadVariableOp/resource:0":
            (("gru/gru_cell/kernel",), 1.0),
        "functional_1_1/gru_1/gru_cell_1/Cast_1/ReadVariableOp/resource:0":
            (("gru/gru_cell/recurrent_kernel",), 1.0),
        "functional_1_1/gru_1/gru_cell_1/split/ReadVariableOp/resource:0":
            (("gru/gru_cell/bias",), 1.0),
        **{k.format(n="_1_1"): v for k, v in _KERAS_HEAD.items()},
    },
    "keras_bilstm": {
        "W__340": (("bilstm/forward_lstm/lstm_cell/kernel",
                    "bilstm/backward_lstm/lstm_cell/kernel"), 1.0),
        "R__341": (("bilstm/forward_lstm/lstm_cell/recurrent_kernel",
                    "bilstm/backward_lstm/lstm_cell/recurrent_kernel"), 1.0),
        "B__342": (("bilstm/forward_lstm/lstm_cell/bias",
                    "bilstm/backward_lstm/lstm_cell/bias"), math.sqrt(2)),
        **{k.format(n="_2_1"): v for k, v in _KERAS_HEAD.items()},
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
    "jax_lstm_scan": {  # jax.lax.scan as a Loop; the weights loop-carried, the sequence too
        "const_0": (("cell/ii/kernel/.value",), 1.0),
        "const_1": (("cell/hi/kernel/.value",), 1.0),
        "const_2": (("cell/hi/bias/.value",), 1.0),
        "const_3": (("cell/if_/kernel/.value",), 1.0),
        "const_4": (("cell/hf/kernel/.value",), 1.0),
        "const_5": (("cell/hf/bias/.value",), 1.0),
        "const_6": (("cell/ig/kernel/.value",), 1.0),
        "const_7": (("cell/hg/kernel/.value",), 1.0),
        "const_8": (("cell/hg/bias/.value",), 1.0),
        "const_9": (("cell/io/kernel/.value",), 1.0),
        "const_10": (("cell/ho/kernel/.value",), 1.0),
        "const_11": (("cell/ho/bias/.value",), 1.0),
        "const_12": (("head/kernel/.value",), 1.0),
        "const_13": (("head/bias/.value",), 1.0),
    },
}
SKLEARN = ("sklearn_mlp_classifier", "sklearn_mlp_regressor")
OPTIMUM = ("optimum_albert_mlm",)
# name -> (exporter, what the file holds), in the coverage table's order.
FILES: dict[str, tuple[str, str]] = {
    "keras_lstm": ("Keras 3 → tf2onnx (`model.export(format=\"onnx\")`)", "LSTM + Dense"),
    "keras_gru": ("Keras 3 → tf2onnx (`model.export(format=\"onnx\")`)", "GRU (a `Loop`) + Dense"),
    "keras_bilstm": ("Keras 3 → tf2onnx (`model.export(format=\"onnx\")`)",
                     "Bidirectional LSTM + Dense"),
    "jax_cnn_bn": ("jax2onnx (`to_onnx`)", "Flax NNX CNN with BatchNorm (stale NHWC value_info)"),
    "jax_lstm_scan": ("jax2onnx (`to_onnx`)",
                      "Flax NNX LSTM cell under `jax.lax.scan` (a `Loop`, opset 23) + Linear"),
    "sklearn_mlp_classifier": ("skl2onnx (`to_onnx`, default options)",
                               "MLPClassifier (ZipMap, ArgMax labels)"),
    "sklearn_mlp_regressor": ("skl2onnx (`to_onnx`, default options)", "MLPRegressor"),
    "optimum_albert_mlm": ("optimum (`main_export`)",
                           "ALBERT masked LM: shared layers, tied decoder"),
}


def model_bytes(name: str) -> bytes:
    """The committed ``.onnx`` file."""
    return (FIXTURES / f"{name}.onnx").read_bytes()


def reference(name: str) -> dict[str, np.ndarray]:
    """The committed ``.npz`` reference of ``name``."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def sample_args(name: str, loaded: LoadedModel) -> tuple[torch.Tensor, ...]:
    """The reference input, in the loaded model's input order."""
    ref = reference(name)
    if name in OPTIMUM:
        return tuple(torch.from_numpy(ref[spec.name]) for spec in loaded.inputs)
    return (torch.from_numpy(ref["input"]),)


def reference_output(name: str) -> np.ndarray:
    """The source framework's forward output on :func:`sample_args`."""
    ref = reference(name)
    return ref["logits"] if name in OPTIMUM else ref["output"]


def sklearn_formula(name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """scikit-learn's MLP forward pass in float64 from the fitted weights (ReLU hidden layers,
    softmax for a multi-class classifier), with the weights requiring grad, by sklearn name."""
    ref = reference(name)
    weights = {key.removeprefix("weight:"): torch.tensor(value, dtype=torch.float64,
                                                         requires_grad=True)
               for key, value in ref.items() if key.startswith("weight:")}
    h = torch.from_numpy(ref["input"]).double()
    layers = len([key for key in weights if key.startswith("coefs_")])
    for i in range(layers):
        h = h @ weights[f"coefs_{i}"] + weights[f"intercepts_{i}"]
        if i < layers - 1:
            h = torch.relu(h)
    if name.endswith("classifier"):
        h = torch.softmax(h, dim=1)
    return h, weights


def expected_grad_norms(name: str) -> dict[str, float]:
    """Per ONNX initializer, the independent reference's gradient norm under mean(y²)."""
    ref = reference(name)
    if name in WEIGHTS:
        return {onnx_name: factor * math.sqrt(sum(float(ref[f"grad_norm:{w}"]) ** 2
                                                  for w in framework))
                for onnx_name, (framework, factor) in WEIGHTS[name].items()}
    if name in SKLEARN:
        output, weights = sklearn_formula(name)
        mean_square(output).backward()
        result = {}
        # skl2onnx names coefs_i "coefficient{i or ''}" and intercepts_i "intercepts{i or ''}"
        for i in range(len([k for k in weights if k.startswith("coefs_")])):
            suffix = str(i) if i else ""
            result[f"coefficient{suffix}"] = float(weights[f"coefs_{i}"].grad.norm())
            result[f"intercepts{suffix}"] = float(weights[f"intercepts_{i}"].grad.norm())
        return result
    return {key.removeprefix("grad_norm:"): float(value)
            for key, value in ref.items() if key.startswith("grad_norm:")}
