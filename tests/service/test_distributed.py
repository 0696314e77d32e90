"""The distributed mode, for real: `graddoctor serve` + two `graddoctor worker` processes on the
machine's Redis (our own db number and queue) and PostgreSQL (a fresh database per session).
These are the commands docker-compose.yml runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.service.conftest import (
    ROOT,
    RedisTarget,
    ServiceProcess,
    StartService,
    dump,
    onnx_mlp,
    service_env,
    wait_for_status,
    worker_pid,
)
from tests.spec_builders import spec_mlp

pytestmark = pytest.mark.service

SLOW_SPEC = spec_mlp(depth=8, width=1024, batch=1024, name="slow")
SLOW_CONFIG = {"samples": 6, "verify_remedies": False}
CHILD_WARM = " warm in "  # a worker child's log line once its warm-up ran


@dataclass
class Cluster:
    api: ServiceProcess
    workers: list[ServiceProcess]
    pg_url: str


@pytest.fixture(scope="module")
def cluster(start_service: StartService, pg_url: str, redis_target: RedisTarget,
            tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    shared = tmp_path_factory.mktemp("shared-data")
    settings: dict[str, Any] = {"broker_url": redis_target.url, "database_url": pg_url,
                                "queue": redis_target.queue, "job_max_attempts": 2,
                                "job_time_limit_s": 120}
    workers = [start_service(["worker", "--concurrency", "1", "--name", f"w{i}-%h@%h"],
                             data_dir=shared, name=f"worker-{i}", **settings)
               for i in range(2)]
    api = start_service(["serve"], data_dir=shared, name="serve-distributed", **settings)
    api.wait_ready()
    for worker in workers:
        worker.wait_log(CHILD_WARM)
    return Cluster(api, workers, pg_url)


def _spec_job(cluster: Cluster, spec: dict[str, Any], config: dict[str, Any],
              **params: Any) -> dict[str, Any]:
    with cluster.api.client() as client:
        answer = client.post("/v1/diagnoses", json={"spec": spec, "config": config},
                             params=params)
        assert answer.status_code in (200, 202), answer.text
        job: dict[str, Any] = answer.json()
        return job


def test_jobs_run_on_celery_workers(cluster: Cluster) -> None:
    started = time.monotonic()
    job = _spec_job(cluster, spec_mlp(width=12, name="dist"), {"samples": 1}, wait=60)
    assert job["status"] == "succeeded", dump(job)
    print(f"\ndistributed POST to succeeded: {time.monotonic() - started:.2f} s")
    with cluster.api.client() as client:
        answer = client.post("/v1/diagnoses", params={"wait": 60},
                             files={"model": ("m.onnx", onnx_mlp(seed=3), "application/onnx")})
        assert answer.json()["status"] == "succeeded", dump(answer.json())
        assert client.get(f"/v1/diagnoses/{job['id']}/report").status_code == 200
        metrics = client.get("/metrics").text
        assert "graddoctor_queue_depth 0" in metrics
        assert client.get("/readyz").json()["checks"] == {"store": "ok", "queue": "ok"}


def test_external_data_job_runs_on_celery_workers(cluster: Cluster) -> None:
    """The data files uploaded with the model reach the Celery worker (shared data dir)."""
    from tests.service.hostile import external_mlp, zip_archive

    model, data = external_mlp()
    with cluster.api.client() as client:
        parts = client.post("/v1/diagnoses", params={"wait": 60, "reuse": "false"},
                            files=[("model", ("m.onnx", model, "application/onnx")),
                                   ("data", ("mlp.onnx.data", data, "application/octet-stream"))])
        assert parts.json()["status"] == "succeeded", dump(parts.json())
        archive = zip_archive({"m.onnx": model, "mlp.onnx.data": data})
        zipped = client.post("/v1/diagnoses", params={"wait": 60, "reuse": "false"},
                             files={"model": ("m.zip", archive, "application/zip")})
        assert zipped.json()["status"] == "succeeded", dump(zipped.json())


def test_killed_worker_child_job_is_redelivered_and_finishes(cluster: Cluster) -> None:
    job = _spec_job(cluster, SLOW_SPEC, {**SLOW_CONFIG, "samples": 2})
    pid = worker_pid(cluster.api.data_dir, job["id"], cluster.pg_url)
    os.kill(pid, signal.SIGKILL)
    with cluster.api.client() as client:
        done = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=150)
    assert done["status"] == "succeeded", dump(done)
    assert done["attempts"] == 2


def test_job_that_kills_every_worker_ends_failed(cluster: Cluster) -> None:
    job = _spec_job(cluster, SLOW_SPEC, {**SLOW_CONFIG, "seed": 5})
    killed: set[int] = set()
    with cluster.api.client() as client:
        for _ in range(2):
            pid = worker_pid(cluster.api.data_dir, job["id"], cluster.pg_url)
            while pid in killed:  # the store still shows the killed attempt
                time.sleep(0.05)
                pid = worker_pid(cluster.api.data_dir, job["id"], cluster.pg_url)
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        done = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=60)
    assert done["status"] == "failed", dump(done)
    assert done["error"]["type"] == "worker_lost"
    assert "2 attempts" in done["error"]["detail"]


def test_cancel_running_job_kills_it(cluster: Cluster) -> None:
    job = _spec_job(cluster, SLOW_SPEC, {**SLOW_CONFIG, "seed": 9})
    pid = worker_pid(cluster.api.data_dir, job["id"], cluster.pg_url)
    with cluster.api.client() as client:
        assert client.delete(f"/v1/diagnoses/{job['id']}").json()["status"] == "cancelled"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker process {pid} still running the cancelled job")
        assert client.get(f"/v1/diagnoses/{job['id']}").json()["status"] == "cancelled"
        after = client.post("/v1/diagnoses", params={"wait": 60},
                            json={"spec": spec_mlp(width=6), "config": {"samples": 1}})
        assert after.json()["status"] == "succeeded"


def test_worker_ping_answers(cluster: Cluster) -> None:
    env = dict(cluster.workers[0].env)
    result = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--ping"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_refuses_to_start_without_a_broker(tmp_path: Any) -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "worker"], cwd=ROOT,
                            env=service_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "GRADDOCTOR_BROKER_URL" in result.stdout
