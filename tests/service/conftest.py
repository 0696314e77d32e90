"""Fixtures for the service tests: real `graddoctor` processes on free loopback ports.

For other test modules (the browser tests reuse ``server``):

- ``server`` (session): a running ``graddoctor serve`` in the embedded mode, 2 worker
  processes, its own temporary ``GRADDOCTOR_DATA_DIR``, no API keys. It is a
  :class:`ServiceProcess`: ``server.base_url`` ("http://127.0.0.1:<port>"), ``server.headers``
  (auth headers, empty here), ``server.data_dir``, ``server.log()``, ``server.client()``
  (an httpx.Client on base_url). Returned once ``/readyz`` answers 200 and both worker
  processes are warm. Job time limit 120 s; ``?wait=60`` on a POST returns the finished job.
- ``start_service``: a factory to start more processes (other settings, Celery workers); they
  are stopped at the end of the test session.
- ``pg_url`` / ``redis_url``: a fresh PostgreSQL database and a dedicated Redis database number
  for this session (skipped when the servers are not running); dropped/cleaned at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER_READY = ") ready in "  # the pool's log line for a warm worker process
REDIS_DB = 13  # our tests' own Redis database number; keys are also namespaced per session
PG_ADMIN = "postgresql://{user}@127.0.0.1:5432/{db}"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """A `graddoctor` subcommand running in its own process group, logging to a file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    base_url: str = ""
    data_dir: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *self.argv], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 90.0) -> ServiceProcess:
        """Poll /readyz until 200 (or fail with the process log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"{self.argv[0]} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.base_url} not ready after {timeout} s:\n{self.log()[-5000:]}")

    def wait_log(self, text: str, count: int = 1, timeout: float = 120.0) -> ServiceProcess:
        """Wait until ``text`` appears ``count`` times in the log (e.g. workers' ready lines)."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not in the log after {timeout} s:\n{self.log()[-5000:]}")
            time.sleep(0.2)
        return self

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL the whole process group (worker children included)."""
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group at once, like a machine going down."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(5)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=90, **kwargs)


def service_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment for a service process: ours, minus GRADDOCTOR_*, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADDOCTOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["GRADDOCTOR_DATA_DIR"] = str(data_dir)
    env.update({f"GRADDOCTOR_{key.upper()}": str(value) for key, value in settings.items()})
    return env


StartService = Callable[..., ServiceProcess]


@pytest.fixture(scope="session")
def start_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartService]:
    """Start `graddoctor <argv>` with settings; every process is stopped at session end."""
    started: list[ServiceProcess] = []

    def start(argv: list[str], *, data_dir: Path | None = None, port: int | None = None,
              name: str = "serve", **settings: Any) -> ServiceProcess:
        data_dir = data_dir or tmp_path_factory.mktemp(f"data-{name}")
        argv = list(argv)
        if argv[0] == "serve":
            port = port or free_port()
            argv += ["--port", str(port)]
        proc = ServiceProcess(argv, service_env(data_dir, **settings),
                              tmp_path_factory.getbasetemp() / "logs" / f"{name}.log",
                              base_url=f"http://127.0.0.1:{port}" if port else "",
                              data_dir=data_dir)
        started.append(proc.start())
        return proc

    yield start
    for proc in started:  # all at once: each may take seconds to stop its workers
        proc.terminate()
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="session")
def server(start_service: StartService) -> ServiceProcess:
    """The shared embedded-mode server (see the module docstring), its 2 workers warm."""
    started = time.monotonic()
    proc = start_service(["serve", "--workers", "2"], name="serve-embedded",
                         job_time_limit_s=120).wait_ready()
    ready = time.monotonic() - started
    proc.wait_log(WORKER_READY, count=2)
    print(f"\nserver: /readyz after {ready:.1f} s, 2 workers warm after "
          f"{time.monotonic() - started:.1f} s")
    return proc


def wait_for_status(client: httpx.Client, job_id: str, statuses: set[str],
                    timeout: float = 90.0) -> dict[str, Any]:
    """Poll a job until its status is in ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/diagnoses/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.1)


def worker_pid(data_dir: Path, job_id: str, store_url: str | None = None,
               timeout: float = 60.0) -> int:
    """The pid of the worker process running ``job_id`` (read from the job store)."""
    from service.store import Store

    store = Store(store_url or f"sqlite:///{data_dir / 'graddoctor.db'}")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            record = store.get(job_id)
            if record is not None and record.status == "running" and record.worker:
                return int(record.worker.rsplit(":", 1)[1])
            time.sleep(0.05)
    finally:
        store.dispose()
    pytest.fail(f"job {job_id} never started running")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"graddoctor_test_{secrets.token_hex(6)}"
    admin = None
    for user in ("postgres", "root"):
        try:
            admin = psycopg.connect(PG_ADMIN.format(user=user, db="postgres"), autocommit=True,
                                    connect_timeout=3)
            break
        except psycopg.OperationalError:
            continue
    if admin is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    user = admin.info.user
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.format(user=user, db=name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@dataclass(frozen=True)
class RedisTarget:
    url: str
    queue: str


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    """Redis db ``REDIS_DB`` and a queue name of our own; our keys are deleted afterwards."""
    redis = pytest.importorskip("redis")
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    queue = f"graddoctor-test-{secrets.token_hex(6)}"
    try:
        yield RedisTarget(url, queue)
    finally:
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        client.close()


def dump(job: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in job.items() if k != "result"}, indent=1, default=str)


def onnx_mlp(depth: int = 2, width: int = 8, batch: int | str = "N", seed: int = 0) -> bytes:
    """A small Gemm+Relu ONNX model (opset 13), built with onnx.helper."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous = "x"
    for index in range(depth + 1):
        out_features = 1 if index == depth else width
        weight = rng.normal(0, (2 / width) ** 0.5, (out_features, width)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{index}"),
                  numpy_helper.from_array(np.zeros(out_features, np.float32), f"b{index}")]
        gemm_out = "y" if index == depth else f"h{index}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [gemm_out],
                                      name=f"fc{index}", transB=1))
        if index < depth:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"a{index}"], name=f"relu{index}"))
            previous = f"a{index}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="graddoctor-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def npz_bytes(**arrays: Any) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
