"""`graddoctor diagnose`: the exit-code contract, JSON output, one-line errors, repaired models.

The first tests run the installed console script in a subprocess, as a pipeline would; the
error table calls ``main()`` in-process (same code path, no interpreter start per case).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from service.cli import main
from tests.onnx_export import export_dynamo, export_legacy

GRADDOCTOR = [sys.executable, "-m", "service.cli"]


def deep_sigmoid_onnx(path: Path) -> Path:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(12):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    net = nn.Sequential(*layers, nn.Linear(32, 4)).eval()
    path.write_bytes(export_legacy(net, (torch.randn(4, 32),), input_names=["x"]))
    return path


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def residual_cnn_onnx(path: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        *[ResidualBlock(16) for _ in range(4)],
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    net.eval()
    path.write_bytes(export_legacy(net, (torch.randn(2, 3, 16, 16),), input_names=["image"],
                                   do_constant_folding=False))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GRADDOCTOR, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_deep_sigmoid_onnx_is_vanishing_with_remedies_naming_layers(tmp_path):
    model = deep_sigmoid_onnx(tmp_path / "sigmoid.onnx")
    done = run_cli("diagnose", str(model), "--samples", "2")
    assert done.returncode == 3, done.stderr
    assert "VANISHING" in done.stdout
    assert "/0/Gemm" in done.stdout
    assert "replace-activation" in done.stdout
    assert "Traceback" not in done.stderr


def test_he_residual_cnn_onnx_is_healthy_and_json_is_the_report(tmp_path):
    model = residual_cnn_onnx(tmp_path / "resnet.onnx")
    done = run_cli("diagnose", str(model), "--format", "json", "--samples", "2", "--seed", "3")
    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
    report = json.loads(done.stdout)
    assert report["verdict"]["status"] == "healthy"
    assert report["config"]["seed"] == 3
    assert report["samples"]["count"] == 2
    assert report["source"]["kind"] == "onnx"
    assert len(report["source"]["sha256"]) == 64
    assert {layer["op_type"] for layer in report["layers"]} >= {"Conv", "Relu", "Gemm"}


def test_optimizer_flag_predicts_that_optimizer(tmp_path):
    # 8 tanh layers at 0.1x Glorot, zero biases: gradients ~5e-8, flat over depth. SGD cannot
    # move them (exit 3); Adam's steps are lr-sized whatever the gradient (exit 0).
    std = 0.1 * (5 / 3) / 32 ** 0.5
    layers: list[dict] = []
    for _ in range(8):
        layers += [{"type": "Linear", "in_features": 32, "out_features": 32,
                    "init": {"scheme": "normal", "std": std}}, {"type": "Tanh"}]
    layers.append({"type": "Linear", "in_features": 32, "out_features": 4})
    spec = tmp_path / "small_init.json"
    spec.write_text(json.dumps({"inputs": [{"name": "x", "shape": [32, 32]}], "layers": layers}))
    common = [str(spec), "--samples", "1", "--format", "json"]
    assert main(["diagnose", *common, "--output", str(tmp_path / "sgd.json")]) == 3
    assert main(["diagnose", *common, "--optimizer", "adam",
                 "--output", str(tmp_path / "adam.json")]) == 0
    report = json.loads((tmp_path / "adam.json").read_text())
    assert report["config"]["optimizer"] == "adam"
    assert report["config"]["learning_rate"] == 1e-3


def test_sequence_loss_flag_judges_a_gated_cell_trained_on_its_last_step(tmp_path):
    spec = tmp_path / "lstm.json"
    spec.write_text(json.dumps({
        "inputs": [{"name": "seq", "shape": [8, 50, 2]}],
        "layers": [{"type": "LSTM", "input_size": 2, "hidden_size": 32, "batch_first": True},
                   {"type": "Linear", "in_features": 32, "out_features": 1}]}))
    common = [str(spec), "--samples", "1", "--format", "json"]
    assert main(["diagnose", *common, "--output", str(tmp_path / "every.json")]) == 0
    assert main(["diagnose", *common, "--sequence-loss", "last_step",
                 "--output", str(tmp_path / "last.json")]) == 3
    report = json.loads((tmp_path / "last.json").read_text())
    assert report["config"]["sequence_loss"] == "last_step"
    assert [r["rule"] for r in report["verdict"]["evidence"]["rules"] if r["fired"]] == [
        "temporal_vanishing"]


def test_a_large_output_scale_is_a_slow_start_reported_as_a_cause_not_exploding(tmp_path):
    # torch's own Linear init scaled 30x, one hidden layer, exported with the default (dynamo)
    # exporter: logits hundreds of times the inputs. Below forward_growth_ratio (1e3) that is a
    # slow start (exit 0, cause large_output_scale); a user who fails builds on slow starts
    # lowers the threshold in --config and gets exit 3 by forward_scale_exploding.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.mul_(30.0)
    model = tmp_path / "wide_init.onnx"
    model.write_bytes(export_dynamo(net.eval(), (torch.randn(8, 32),), input_names=["x"]))
    common = [str(model), "--samples", "1", "--optimizer", "adam", "--format", "json"]
    assert main(["diagnose", *common, "--output", str(tmp_path / "default.json")]) == 0
    report = json.loads((tmp_path / "default.json").read_text())
    cause = next(c for c in report["causes"] if c["id"] == "large_output_scale")
    growth = report["verdict"]["evidence"]["forward_growth"]["median"]
    assert 10 < growth < 1e3
    assert cause["evidence"]["exploding_above"] == 1e3
    assert "slow start" in cause["title"]
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"thresholds": {"adam_forward_growth_ratio": 10}}))
    assert main(["diagnose", *common, "--config", str(strict),
                 "--output", str(tmp_path / "strict_report.json")]) == 3
    verdict = json.loads((tmp_path / "strict_report.json").read_text())["verdict"]
    assert verdict["summary"].startswith("Exploding (forward_scale_exploding)")


def test_default_export_with_folded_batchnorm_exits_4_saying_how_to_reexport(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    model = tmp_path / "folded.onnx"
    model.write_bytes(export_legacy(net, (torch.randn(2, 3, 8, 8),)))  # the exporter's defaults
    assert main(["diagnose", str(model), "--samples", "1", "--format", "json",
                 "--output", str(tmp_path / "r.json")]) == 4
    verdict = json.loads((tmp_path / "r.json").read_text())["verdict"]
    assert verdict["status"] == "inconclusive"
    assert "do_constant_folding=False" in verdict["summary"]


def test_default_export_of_a_vanilla_rnn_exits_3_by_its_memory(tmp_path):
    # torch.onnx.export's default (dynamo) unrolls nn.RNN into one cell copy per step: judged
    # through time like its legacy export's RNN node.
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(2, 32, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    model = tmp_path / "rnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Tagger().eval(), (torch.randn(4, 50, 2),), str(model))
    assert main(["diagnose", str(model), "--samples", "1", "--format", "json",
                 "--output", str(tmp_path / "r.json")]) == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"]["summary"].startswith("Vanishing (temporal_vanishing)")
    assert len(report["temporal"][0]["grad_norms"]) == 50


def test_repaired_model_rediagnoses_healthy(tmp_path):
    model = deep_sigmoid_onnx(tmp_path / "sigmoid.onnx")
    fixed = tmp_path / "fixed.onnx"
    assert main(["diagnose", str(model), "--samples", "1", "--fix", "reinitialize",
                 "--fix-output", str(fixed), "--output", str(tmp_path / "r.txt")]) == 3
    assert main(["diagnose", str(fixed), "--samples", "1", "--format", "json",
                 "--output", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["verdict"]["status"] == "healthy"


def _write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


SPEC = {"inputs": [{"name": "x", "shape": [4, 8]}],
        "layers": [{"type": "Linear", "in_features": 8, "out_features": 8}]}


def _spec(**changes) -> str:
    spec = json.loads(json.dumps(SPEC))
    spec.update(changes)
    return json.dumps(spec)


ERROR_CASES = {
    "missing-file": (lambda d: ["diagnose", str(d / "nope.onnx")], "does not exist"),
    "garbage-bytes": (lambda d: ["diagnose", str(_write(d / "m.onnx", b"\x00garbage" * 50))],
                      "onnx"),
    "empty-file": (lambda d: ["diagnose", str(_write(d / "m.onnx", b""))], "empty"),
    "truncated-onnx": (lambda d: ["diagnose", str(_write(
        d / "m.onnx", deep_sigmoid_onnx(d / "full.onnx").read_bytes()[:300]))], "onnx"),
    "unknown-spec-type": (lambda d: ["diagnose", str(_write(d / "s.json", _spec(
        layers=[{"type": "Linear", "in_features": 8, "out_features": 8},
                {"type": "Frobnicate"}])))],
        "layers[1]"),
    "bad-kwarg": (lambda d: ["diagnose", str(_write(d / "s.json", _spec(
        layers=[{"type": "Linear", "in_features": 8, "out_features": "eight"}])))],
        "out_features"),
    "unresolvable-dynamic-dim": (lambda d: ["diagnose", str(_write(d / "s.onnx", _dynamic_onnx()))],
                                 "axis 1"),
    "bad-config-json": (lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                                   "--config", str(_write(d / "c.json", "{nope"))],
                        "not valid JSON"),
    "unknown-config-field": (lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                                        "--config", str(_write(d / "c.json", '{"sampels": 2}'))],
                             "sampels"),
    "duplicated-config-key": (lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                                         "--config", str(_write(d / "c.json",
                                                                '{"seed": 1, "seed": 2}'))],
                              "duplicated key 'seed'"),
    "unknown-optimizer-in-config": (
        lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                   "--config", str(_write(d / "c.json", '{"optimizer": "rmsprop"}'))],
        "config.optimizer"),
    "wrong-input-name": (lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                                    "--inputs", str(_npz(d / "in.npz", y=np.zeros((4, 8),
                                                                                 np.float32)))],
                         "'y'"),
    "pickled-inputs": (lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                                  "--inputs", str(_npz(d / "in.npz", x=np.array([{"a": 1}],
                                                                              dtype=object)))],
                       "pickle"),
    "usage-error": (lambda d: ["diagnose"], "required"),
    "external-data-missing": (lambda d: ["diagnose", str(_external(d, data=False))],
                              "'mlp.onnx.data': no such file"),
    "external-data-traversal": (lambda d: ["diagnose", str(_external(
        d, location="../mlp.onnx.data"))], "'..'"),
    "external-data-lying-offset": (lambda d: ["diagnose", str(_external(
        d, offset_shift=1 << 20))], "beyond the end"),
    "data-dir-missing": (lambda d: ["diagnose", str(_external(d)), "--data-dir",
                                    str(d / "nowhere")], "does not exist"),
    "max-parameters-flag": (lambda d: ["diagnose", str(_external(d)), "--max-parameters", "10"],
                            "over the limit of 10"),
    "fix-without-output": (lambda d: ["diagnose", str(_write(d / "s.json", json.dumps(SPEC))),
                                      "--fix", "reinitialize"], "--fix-output"),
    "every-output-empty": (lambda d: ["diagnose", str(_write(d / "e.onnx", _empty_output_onnx()))],
                           "every floating-point output is empty"),
    "lstm-projection-dropped": (lambda d: ["diagnose", str(_write(d / "p.onnx",
                                                                  _projected_lstm_onnx()))],
                                "proj_size"),
}


def _empty_output_onnx() -> bytes:
    """A "detector" that keeps no rows: its only output is [0, 4] (nothing to differentiate)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    ints = [numpy_helper.from_array(np.array([v], np.int64), name)
            for name, v in (("zero", 0), ("axis", 0))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Slice", ["h", "zero", "zero", "axis"], ["kept"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [3, 4])],
                              [helper.make_tensor_value_info("kept", TensorProto.FLOAT, [0, 4])],
                              initializer=[weight, *ints])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _projected_lstm_onnx() -> bytes:
    """dynamo's export of nn.LSTM(proj_size=...): hidden_size 4, an 8-wide initial cell state."""
    from tests.onnx_export import export_dynamo

    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 8, proj_size=4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    torch.manual_seed(0)
    return export_dynamo(Projected().eval(), (torch.randn(2, 5, 3),))


def _external(folder: Path, *, data: bool = True, **lies) -> Path:
    """An MLP with its weights in ``mlp.onnx.data`` beside it (dynamo's layout)."""
    from tests.service.hostile import external_mlp

    model, weights = external_mlp(**lies)
    if data:
        (folder / "mlp.onnx.data").write_bytes(weights)
    return _write(folder / "mlp.onnx", model)


def test_external_data_beside_the_model_and_in_data_dir(tmp_path):
    beside = run_cli("diagnose", str(_external(tmp_path)), "--samples", "1", "--format", "json")
    assert beside.returncode == 0, beside.stderr
    elsewhere = tmp_path / "weights"
    elsewhere.mkdir()
    (tmp_path / "mlp.onnx.data").rename(elsewhere / "mlp.onnx.data")
    moved = run_cli("diagnose", str(tmp_path / "mlp.onnx"), "--samples", "1", "--format", "json",
                    "--data-dir", str(elsewhere))
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["layers"] == json.loads(beside.stdout)["layers"]


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _dynamic_onnx() -> bytes:
    """A model whose input has a dynamic time axis that nothing in the graph resolves."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(nn.Linear(8, 2).eval(), (torch.randn(2, 3, 8),), buffer, dynamo=False,
                          input_names=["seq"], dynamic_axes={"seq": {0: "batch", 1: "time"}})
    return buffer.getvalue()


@pytest.mark.parametrize(("make_args", "needle"), list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make_args, needle):
    try:
        code = main(make_args(tmp_path))
    except SystemExit as exc:  # argparse usage errors exit through SystemExit
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, err
    assert lines[-1].startswith("graddoctor: error:"), err
    assert "Traceback" not in err
    assert needle in err, err
