"""A real `graddoctor serve` (embedded mode) over real HTTP: jobs run on its worker pool."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import (
    WORKER_READY,
    ServiceProcess,
    StartService,
    dump,
    npz_bytes,
    onnx_mlp,
    wait_for_status,
    worker_pid,
)
from tests.spec_builders import spec_mlp

pytestmark = pytest.mark.service

# About 1-2 s per sample, 32 samples, under 200 MiB: long enough to be caught running.
# Runs ~12 s on a 2-core machine: well past the 6 s job time limit of the `limited` server.
SLOW_SPEC = spec_mlp(depth=8, width=1024, batch=2048, name="slow")
SLOW_CONFIG = {"samples": 32, "verify_remedies": False}


def _post_spec(client: httpx.Client, spec: dict[str, Any], config: dict[str, Any] | None = None,
               **params: Any) -> httpx.Response:
    return client.post("/v1/diagnoses", json={"spec": spec, "config": config}, params=params)


def test_spec_job_runs_to_a_verdict_and_a_report(server: ServiceProcess) -> None:
    with server.client() as client:
        started = time.monotonic()
        answer = _post_spec(client, spec_mlp(width=12), {"samples": 1}, wait=60)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        job = answer.json()
        assert job["status"] == "succeeded", dump(job)
        assert job["verdict"] == job["result"]["verdict"]["status"] == "healthy"
        assert job["started_at"]
        assert job["finished_at"]
        assert job["attempts"] == 1
        print(f"POST to succeeded (small spec, wait=60): {elapsed:.2f} s")
        page = client.get(job["links"]["report"])
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "healthy" in page.text


def test_get_with_wait_holds_until_the_job_finishes(server: ServiceProcess) -> None:
    # A client that submitted without waiting (a CI step that queues first) waits for the
    # verdict with one long-poll instead of a polling loop, and hears of it as it is written.
    with server.client() as client:
        queued = _post_spec(client, spec_mlp(width=16, name="long-poll"), {"samples": 1},
                            reuse="false")
        assert queued.status_code == 202, queued.text
        path = queued.headers["Location"]
        done = client.get(path, params={"wait": 60}, timeout=90)
        assert done.status_code == 200
        job = done.json()
        assert job["status"] == "succeeded", dump(job)
        assert job["result"]["verdict"]["status"] == "healthy"
        started = time.monotonic()
        again = client.get(path, params={"wait": 60}, timeout=90)  # finished: no hold
        assert again.json()["status"] == "succeeded"
        assert time.monotonic() - started < 10
        missing = client.get("/v1/diagnoses/0123456789abcdef", params={"wait": 1})
        assert missing.status_code == 404
        too_long = client.get(path, params={"wait": 61})
        assert too_long.status_code == 422
        assert too_long.json()["field"] == "query.wait"


def test_onnx_upload_with_inputs_runs(server: ServiceProcess) -> None:
    inputs = npz_bytes(x=np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    with server.client() as client:
        answer = client.post("/v1/diagnoses", params={"wait": 60}, files={
            "model": ("mlp.onnx", onnx_mlp(), "application/octet-stream"),
            "inputs": ("inputs.npz", inputs, "application/octet-stream")},
            data={"config": '{"samples": 1}'})
        job = answer.json()
        assert answer.status_code == 200
        assert job["status"] == "succeeded", dump(job)
        assert job["result"]["samples"]["input_shapes"] == {"x": [4, 8]}
        assert job["filename"] == "mlp.onnx"


def test_bad_model_is_a_failed_job_not_a_500(server: ServiceProcess) -> None:
    with server.client() as client:
        answer = client.post("/v1/diagnoses", params={"wait": 60},
                             files={"model": ("x.onnx", b"not a protobuf", "application/onnx")})
        job = answer.json()
        assert answer.status_code == 200
        assert job["status"] == "failed", dump(job)
        assert job["error"]["type"] == "invalid_model"
        assert job["error"]["detail"]
        assert job["result"] is None
        unknown = _post_spec(client, {"inputs": [{"name": "x", "shape": [2, 3]}],
                                      "layers": [{"type": "Lineer"}]}, wait=60).json()
        assert unknown["status"] == "failed"
        assert unknown["error"]["type"] == "invalid_spec"
        assert "layers" in unknown["error"]["detail"]


def test_identical_submission_reuses_the_result(server: ServiceProcess) -> None:
    spec = spec_mlp(width=10, name="reuse-me")
    with server.client() as client:
        first = _post_spec(client, spec, {"samples": 1}, wait=60).json()
        again = _post_spec(client, spec, {"samples": 1, "seed": 0}, wait=60)
        assert again.status_code == 200
        second = again.json()
        assert second["id"] != first["id"]
        assert second["reused_from"] == first["id"]
        assert second["result"] == first["result"]
        assert client.get(second["links"]["report"]).status_code == 200
        fresh = _post_spec(client, spec, {"samples": 1}, wait=60, reuse="false").json()
        assert fresh["reused_from"] is None
        assert fresh["status"] == "succeeded"


def test_killed_worker_fails_only_its_job_and_the_pool_recovers(server: ServiceProcess) -> None:
    with server.client() as client:
        victim = _post_spec(client, SLOW_SPEC, SLOW_CONFIG).json()
        bystander = _post_spec(client, SLOW_SPEC, {**SLOW_CONFIG, "seed": 1}).json()
        pid = worker_pid(server.data_dir, victim["id"])
        other = worker_pid(server.data_dir, bystander["id"])
        waiting = _post_spec(client, spec_mlp(width=9), {"samples": 1}).json()
        assert client.get(waiting["links"]["self"]).json()["status"] == "queued"
        os.kill(pid, signal.SIGKILL)
        failed = wait_for_status(client, victim["id"], {"failed", "succeeded"}, timeout=30)
        assert failed["status"] == "failed", dump(failed)
        assert failed["error"]["type"] == "worker_lost"
        assert "SIGKILL" in failed["error"]["detail"]
        # The running bystander is untouched; cancelling it kills its worker too.
        assert client.get(bystander["links"]["self"]).json()["status"] == "running"
        cancelled = client.delete(bystander["links"]["self"]).json()
        assert cancelled["status"] == "cancelled"
        with pytest.raises(ProcessLookupError):
            _wait_gone(other)
        # The queued job and a new one run on the replacement processes.
        done = wait_for_status(client, waiting["id"], {"succeeded", "failed"}, timeout=90)
        assert done["status"] == "succeeded", dump(done)
        after = _post_spec(client, spec_mlp(width=11), {"samples": 1}, wait=60).json()
        assert after["status"] == "succeeded"
        assert client.get(bystander["links"]["self"]).json()["status"] == "cancelled"


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.kill(pid, 0)  # raises ProcessLookupError once the process is gone
        time.sleep(0.05)


@pytest.fixture(scope="module")
def limited(start_service: StartService) -> ServiceProcess:
    """One warm worker with tight limits: 6 s and 512 MiB per job."""
    return start_service(["serve", "--workers", "1"], name="serve-limited",
                         job_time_limit_s=6, job_memory_limit_mb=512).wait_ready().wait_log(
                             WORKER_READY)


def test_time_limit_fails_the_job_naming_the_limit(limited: ServiceProcess) -> None:
    with limited.client() as client:
        job = _post_spec(client, SLOW_SPEC, SLOW_CONFIG, wait=40).json()
        assert job["status"] == "failed", dump(job)
        assert job["error"]["type"] == "job_time_limit"
        assert job["error"]["context"] == {"limit": "job_time_limit_s", "limit_value": 6.0}
        assert "6 s" in job["error"]["detail"]


def test_memory_limit_fails_the_job_naming_the_limit(limited: ServiceProcess) -> None:
    # A 640 MiB weight (168 M parameters, inside the engine's own budgets): refused at once.
    big = {"name": "fat", "inputs": [{"name": "x", "shape": [2, 8192]}],
           "layers": [{"type": "Linear", "in_features": 8192, "out_features": 20480},
                      {"type": "Tanh"},
                      {"type": "Linear", "in_features": 20480, "out_features": 1}]}
    with limited.client() as client:
        job = _post_spec(client, big, {"samples": 1, "verify_remedies": False}, wait=40).json()
        assert job["status"] == "failed", dump(job)
        assert job["error"]["type"] == "job_memory_limit", dump(job)
        assert "512 MiB" in job["error"]["detail"]
        ok = _post_spec(client, spec_mlp(width=7), {"samples": 1}, wait=40).json()
        assert ok["status"] == "succeeded", dump(ok)


def test_restart_never_leaves_a_job_running(limited: ServiceProcess,
                                            start_service: StartService) -> None:
    with limited.client() as client:
        running = _post_spec(client, SLOW_SPEC, {**SLOW_CONFIG, "seed": 7}).json()
        worker_pid(limited.data_dir, running["id"])
        queued = _post_spec(client, spec_mlp(width=5), {"samples": 1}).json()
    limited.kill()  # the API and its workers die at once: nobody records anything
    port = int(limited.base_url.rsplit(":", 1)[1])
    again = start_service(["serve", "--workers", "1"], name="serve-restarted",
                          data_dir=limited.data_dir, port=port).wait_ready()
    with again.client() as client:
        lost = client.get(running["links"]["self"]).json()
        assert lost["status"] == "failed", dump(lost)
        assert lost["error"]["type"] == "worker_lost"
        assert "stopped" in lost["error"]["detail"]
        assert lost["finished_at"] is not None
        done = wait_for_status(client, queued["id"], {"succeeded", "failed"}, timeout=90)
        assert done["status"] == "succeeded", dump(done)
