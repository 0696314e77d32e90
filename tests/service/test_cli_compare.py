"""`graddoctor compare`: reports or models in, a per-layer diff and a gate's exit status out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.exit_codes import ExitCode
from tests.report_factory import demo_report

GRADDOCTOR = [sys.executable, "-m", "service.cli"]


def _relu_spec(path: Path, init: dict) -> Path:
    path.write_text(json.dumps({
        "name": "relu-mlp", "inputs": [{"name": "x", "shape": [16, 32]}], "init": init,
        "layers": [{"type": "Repeat", "times": 8, "layers": [
            {"type": "Linear", "in_features": 32, "out_features": 32}, {"type": "ReLU"}]},
            {"type": "Linear", "in_features": 32, "out_features": 4}]}))
    return path


def test_models_are_diagnosed_with_the_same_config_and_a_regression_exits_5(tmp_path):
    """He-initialized (healthy) → std 0.05 (vanishing over 9 layers): the gate fails."""
    before = _relu_spec(tmp_path / "before.json", {"scheme": "kaiming_normal"})
    after = _relu_spec(tmp_path / "after.json", {"scheme": "normal", "std": 0.05})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"samples": 1, "verify_remedies": False}))
    done = subprocess.run([*GRADDOCTOR, "compare", str(before), str(after), "--config",
                           str(config), "--format", "json"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == ExitCode.REGRESSED, done.stderr
    result = json.loads(done.stdout)
    assert result["worse"] is True
    assert result["verdict"]["status_before"] == "healthy"
    assert result["verdict"]["status_after"] == "vanishing"
    first = next(layer for layer in result["layers"] if layer["name"] == "layers.0[0].layers.0")
    assert first["regressed"]
    assert first["relative_after"] < 1e-3


def test_the_same_model_on_both_sides_passes_the_gate(tmp_path, capsys):
    model = _relu_spec(tmp_path / "model.json", {"scheme": "kaiming_normal"})
    code = main(["compare", str(model), str(model), "--samples", "1"])
    out = capsys.readouterr().out
    assert code == ExitCode.HEALTHY
    assert out.startswith("Gradient health: not worse")
    assert "no backward signal moved by 10 % or more" in out


def _write_report(path: Path, blocks: int = 4, scale_first: float = 1.0) -> Path:
    report = demo_report(blocks=blocks)
    signal = report.layers[0].output_grad_norm
    assert signal is not None
    assert signal.median is not None
    report.layers[0].output_grad_norm = signal.model_copy(
        update={"median": signal.median * scale_first})
    path.write_text(report.model_dump_json())
    return path


@pytest.mark.parametrize(("scale", "factor", "code"), [
    (1.0, "10", ExitCode.HEALTHY),
    (1e-3, "10", ExitCode.REGRESSED),
    (1e-3, "1e4", ExitCode.HEALTHY),
], ids=["same", "1000x-smaller", "1000x-under-a-1e4-factor"])
def test_json_reports_and_the_factor(tmp_path, capsys, scale, factor, code):
    before = _write_report(tmp_path / "before.json")
    after = _write_report(tmp_path / "after.json", scale_first=scale)
    assert main(["compare", str(before), str(after), "--factor", factor]) == code
    out = capsys.readouterr().out
    assert ("WORSE" in out) is (code == ExitCode.REGRESSED)


@pytest.mark.parametrize(("args", "message"), [
    (["missing.json", "{b}"], "before: file missing.json does not exist"),
    (["{a}", "{b}", "--factor", "1"], "--factor must be a finite number > 1"),
    (["{a}", "{broken}"], "after: {broken} is not a GradDoctor report"),
], ids=["missing-file", "factor-1", "not-a-report"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    paths = {"a": str(_write_report(tmp_path / "a.json")),
             "b": str(_write_report(tmp_path / "b.json")),
             "broken": str(tmp_path / "broken.json")}
    (tmp_path / "broken.json").write_text(json.dumps({"verdict": {}, "layers": []}))
    code = main(["compare", *(a.format(**paths) for a in args)])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT
    assert message.format(**paths) in err
    assert err.count("\n") == 1
