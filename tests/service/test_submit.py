"""`graddoctor submit` against the running server: the exit codes a CI step gates on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import ROOT, ServiceProcess, free_port, onnx_mlp
from tests.spec_builders import spec_mlp

pytestmark = pytest.mark.service

# Runs the CLI in-process and then checks that torch was never imported.
_NO_TORCH = ("import sys; from service.cli import main; code = main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules, 'submit imported torch'; sys.exit(code)")


def _submit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _NO_TORCH, "submit", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "healthy": tmp_path / "healthy.json", "vanishing": tmp_path / "vanishing.json",
        "onnx": tmp_path / "model.onnx", "broken": tmp_path / "broken.onnx",
        "config": tmp_path / "config.json", "bad_config": tmp_path / "bad.json",
    }
    paths["healthy"].write_text(json.dumps(spec_mlp(width=14, name="ci-healthy")))
    paths["vanishing"].write_text(json.dumps(spec_mlp(depth=10, width=32, activation="Sigmoid",
                                                      name="ci-vanishing")))
    paths["onnx"].write_bytes(onnx_mlp(seed=11))
    paths["broken"].write_bytes(b"\x08\x07garbage")
    paths["config"].write_text('{"samples": 1}')
    paths["bad_config"].write_text('{"samples": 0}')
    return paths


def test_healthy_spec_exits_0_with_a_text_summary(server: ServiceProcess,
                                                  files: dict[str, Path]) -> None:
    result = _submit(files["healthy"], "--url", server.base_url, "--config", files["config"],
                     "--wait")
    assert result.returncode == 0, result.stderr
    assert "healthy" in result.stdout.lower()
    assert f"Report: {server.base_url}/v1/diagnoses/" in result.stdout


def test_vanishing_spec_exits_3_and_json_is_the_report(server: ServiceProcess,
                                                       files: dict[str, Path]) -> None:
    result = _submit(files["vanishing"], "--url", server.base_url, "--config", files["config"],
                     "--wait", "--format", "json")
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"]["status"] == "vanishing"


def test_inconclusive_verdict_exits_4_and_metrics_count_it(server: ServiceProcess,
                                                           tmp_path: Path) -> None:
    # mean(y²) of a unit-gain LayerNorm output is constant: the caller's loss cannot tell.
    spec = spec_mlp(width=16, name="ci-inconclusive")
    spec["layers"][-1]["out_features"] = 16
    spec["layers"].append({"type": "LayerNorm", "normalized_shape": 16, "eps": 1e-12})
    model, config = tmp_path / "normalized.json", tmp_path / "loss.json"
    model.write_text(json.dumps(spec))
    config.write_text('{"samples": 1, "loss": "mean_square"}')
    result = _submit(model, "--url", server.base_url, "--config", config, "--wait")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "INCONCLUSIVE" in result.stdout
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    counted = [line for line in metrics.splitlines()
               if line.startswith('graddoctor_verdicts{status="inconclusive"}')]
    assert counted, metrics
    assert int(counted[0].split()[-1]) >= 1, metrics


def test_onnx_model_exits_0(server: ServiceProcess, files: dict[str, Path]) -> None:
    result = _submit(files["onnx"], "--url", server.base_url, "--config", files["config"],
                     "--wait", "--format", "json", "--no-reuse")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"]["kind"] == "onnx"


def test_external_data_beside_the_model_is_uploaded(server: ServiceProcess, tmp_path: Path,
                                                    files: dict[str, Path]) -> None:
    from tests.service.hostile import external_mlp

    model, data = external_mlp()
    (tmp_path / "ext.onnx").write_bytes(model)
    (tmp_path / "mlp.onnx.data").write_bytes(data)
    result = _submit(tmp_path / "ext.onnx", "--url", server.base_url, "--config",
                     files["config"], "--wait", "--format", "json", "--no-reuse")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"]["kind"] == "onnx"
    names = {param["name"] for layer in report["layers"] for param in layer["parameters"]}
    assert {"w0", "w1", "w2"} <= names
    (tmp_path / "mlp.onnx.data").unlink()
    missing = _submit(tmp_path / "ext.onnx", "--url", server.base_url, "--wait")
    assert missing.returncode == 2
    assert "'mlp.onnx.data', not found beside" in missing.stderr


@pytest.mark.parametrize(
    ("case", "extra", "needle"),
    [
        pytest.param("broken", (), "invalid_model", id="broken-onnx-fails-job"),
        pytest.param("bad_config", ("--config",), "invalid_config", id="bad-config-422"),
    ],
)
def test_bad_input_exits_2(server: ServiceProcess, files: dict[str, Path], case: str,
                           extra: tuple[str, ...], needle: str) -> None:
    args: list[str | Path] = ([files["healthy"], *extra, files[case]] if extra
                              else [files[case]])
    result = _submit(*args, "--url", server.base_url, "--wait")
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr


def test_without_wait_prints_the_job_and_exits_0(server: ServiceProcess,
                                                 files: dict[str, Path]) -> None:
    result = _submit(files["healthy"], "--url", server.base_url, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] in ("queued", "running", "succeeded")


def test_unreachable_service_exits_1(files: dict[str, Path]) -> None:
    result = _submit(files["healthy"], "--url", f"http://127.0.0.1:{free_port()}", "--wait")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


class _Answers:
    """A stand-in for the service: answers each status request at once with the next record."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses, self.params = statuses, []

    def get(self, _path: str, params: dict | None = None) -> httpx.Response:
        self.params.append(params)
        status = self.statuses.pop(0)
        return httpx.Response(200, json={"id": "j", "status": status,
                                          "links": {"self": "/v1/diagnoses/j"}})


def test_wait_long_polls_and_stays_gentle_with_a_server_that_answers_at_once(monkeypatch):
    # Against a server with GET ?wait each request is held until the job ends; one without it
    # answers at once, and then requests are still a second apart, not a busy loop.
    from service.commands import submit

    slept: list[float] = []
    monkeypatch.setattr(submit.time, "sleep", slept.append)
    service = _Answers(["running", "running", "succeeded"])
    job = submit._wait(service, {"id": "j", "status": "queued",
                                 "links": {"self": "/v1/diagnoses/j"}}, timeout=600)
    assert job["status"] == "succeeded"
    assert [p["wait"] for p in service.params] == [submit._HOLD_S] * 3
    assert len(slept) == 2
    assert all(0.9 < s <= submit._POLL_S for s in slept)
