"""ONNX conformance: every backend node test of the installed onnx, through our loader.

Runs ``scripts/conformance.py`` (all cases, two worker processes, about a minute) and holds two
lines: the number of passing cases never drops below ``PASS_FLOOR``, and no op that real
exporters emit gains a case whose outputs are silently wrong.

To raise the floor after adding or fixing converters: run
``.venv/bin/python scripts/conformance.py`` (it also regenerates ``docs/conformance.md``), and set
``PASS_FLOOR`` to the ``pass=`` count it prints. Never lower it; a drop means a converter
regressed. When a known-wrong case is fixed, delete it from ``KNOWN_WRONG``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "conformance.py"

# Passing cases measured with onnx 1.23.2, onnx2torch 1.5.15, torch 2.14.1 (1,404 cases).
PASS_FLOOR = 1053

# Ops that the legacy and dynamo exporters emit for common models: a `wrong` case here means a
# user's gradients could be silently off.
EXPORTER_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Exp", "Log", "Abs", "Erf", "Tanh",
    "Sigmoid", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Mish", "Clip", "Softmax", "LogSoftmax", "MatMul",
    "Gemm", "Conv", "ConvTranspose", "GridSample", "AffineGrid", "MaxPool", "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool", "BatchNormalization", "LayerNormalization", "GroupNormalization",
    "InstanceNormalization", "RMSNormalization", "Attention", "Dropout", "Reshape",
    "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand", "Tile", "Where",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Cast",
    "CastLike", "Shape", "Size", "Constant", "ConstantOfShape", "Range", "CumSum", "Trilu",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin", "TopK", "Einsum", "Resize",
    "Upsample", "Pad", "Identity", "Min", "Max", "Sum", "Mean", "LSTM", "GRU", "RNN",
    "NonZero", "OneHot", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Reciprocal",
    "IsNaN", "IsInf", "DepthToSpace", "SpaceToDepth", "SoftmaxCrossEntropyLoss",
    "NegativeLogLikelihoodLoss",
})

# `wrong` cases of exporter ops known when the floor was set; delete an entry once its case
# passes. Adding one is not a fix.
KNOWN_WRONG: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The JSON document of one full conformance run."""
    results = tmp_path_factory.mktemp("conformance") / "conformance.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--jobs", "2", "--json", str(results), "--md", ""],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(results.read_text())


def test_pass_count_never_drops(conformance: dict) -> None:
    summary = conformance["summary"]
    assert summary["pass"] >= PASS_FLOOR, (
        f"{summary['pass']} of {summary['cases']} ONNX node tests pass, below the floor of "
        f"{PASS_FLOOR}: a converter regressed ({summary})"
    )


def test_no_new_wrong_outputs_for_exporter_ops(conformance: dict) -> None:
    wrong = {
        name: record for name, record in conformance["cases"].items()
        if record["status"] == "wrong" and record["domain"] == "ai.onnx"
        and record["op"] in EXPORTER_OPS
    }
    new = {name: record["message"] for name, record in wrong.items() if name not in KNOWN_WRONG}
    assert not new, f"cases with silently wrong outputs: {new}"


def test_every_case_is_classified(conformance: dict) -> None:
    statuses = {"pass", "wrong", "unsupported", "error", "backward"}
    cases = conformance["cases"]
    assert len(cases) == conformance["summary"]["cases"] > 1000
    assert {record["status"] for record in cases.values()} <= statuses
    unexplained = [name for name, record in cases.items()
                   if record["status"] != "pass" and not record["message"]]
    assert not unexplained
