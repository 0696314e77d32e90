"""Faults, each with its expected outcome: workers killed, the API restarted, Redis and
PostgreSQL going away, a full disk, a flood of clients, and retention cleanup.

Faults are done only to processes and servers these tests start themselves: a private embedded
server whose data directory is a small tmpfs, and a distributed cluster on a private Redis and a
private PostgreSQL cluster. Already covered elsewhere, and not repeated here: a SIGKILLed worker
with one queued job and a cancelled bystander (test_server.py), the whole server SIGKILLed and
restarted (test_server.py), a SIGKILLed Celery child redelivered, and a job that kills its worker
every time (test_distributed.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from service.app import create_app
from service.settings import Settings
from service.store import Store
from tests.service.conftest import (
    WORKER_READY,
    ServiceProcess,
    StartService,
    dump,
    free_port,
    service_env,
    wait_for_status,
    worker_pid,
)
from tests.service.faults_support import (
    MIB,
    LimitedServiceProcess,
    PrivatePostgres,
    PrivateRedis,
    SmallDisk,
    group_alive,
    listing,
    parent_pid,
    parse_metrics,
    temp_folder,
    wait_until,
)
from tests.spec_builders import spec_mlp

pytestmark = pytest.mark.service

# About 2 s per sample on a warm worker with 2 threads: long enough to be caught running.
SLOW_SPEC = spec_mlp(depth=8, width=1024, batch=1024, name="slow")
# Half that: a job that keeps a worker busy for a few seconds, well inside the time limit.
BUSY_SPEC = spec_mlp(depth=8, width=1024, batch=512, name="busy")
SLOW = {"verify_remedies": False}
SMALL = {"samples": 1}
FINAL = {"succeeded", "failed", "cancelled"}


def _post(client: httpx.Client, spec: dict[str, Any], config: dict[str, Any],
          **params: Any) -> dict[str, Any]:
    answer = client.post("/v1/diagnoses", json={"spec": spec, "config": config}, params=params)
    assert answer.status_code in (200, 202), answer.text
    job: dict[str, Any] = answer.json()
    return job


def _status(client: httpx.Client, job: dict[str, Any]) -> str:
    return str(client.get(job["links"]["self"]).json()["status"])


def _assert_clean_error(answer: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """A refused request: the status, our JSON error body, nothing leaked from the server."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    body: dict[str, Any] = answer.json()
    assert body["error"] == error, body
    assert body["detail"]
    assert "Traceback" not in answer.text
    assert 'File "' not in answer.text
    return body


# === Embedded mode ===========================================================================


@dataclass
class Embedded:
    """A private `graddoctor serve` (2 workers) on a small filesystem; restartable."""

    disk: SmallDisk
    logs: Path
    port: int = field(default_factory=free_port)
    proc: ServiceProcess | None = None
    started: list[ServiceProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.disk.path

    def start(self, name: str, **settings: Any) -> ServiceProcess:
        proc = LimitedServiceProcess(
            ["serve", "--workers", "2", "--port", str(self.port)],
            service_env(self.data_dir, job_time_limit_s=120, **settings),
            self.logs / f"{name}.log", base_url=f"http://127.0.0.1:{self.port}",
            data_dir=self.data_dir, file_size_limit=self.disk.file_size_limit)
        self.started.append(proc)
        self.proc = proc.start()
        proc.wait_ready().wait_log(WORKER_READY, count=2)
        return proc

    def client(self) -> httpx.Client:
        assert self.proc is not None
        return self.proc.client()

    def store(self) -> Store:
        return Store(f"sqlite:///{self.data_dir / 'graddoctor.db'}")

    def close(self) -> None:
        for proc in self.started:  # throwaway processes: no need to wait for a graceful stop
            if proc.process is not None:
                proc.kill()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    disk = SmallDisk(temp_folder("graddoctor-faults-") / "data", 64 * MIB).mount()
    service = Embedded(disk, tmp_path_factory.getbasetemp() / "logs")
    try:
        started = time.monotonic()
        service.start("faults-embedded")
        print(f"\nfaults: embedded server ready with 2 warm workers in "
              f"{time.monotonic() - started:.1f} s (data dir on "
              f"{'tmpfs' if disk.mounted else 'RLIMIT_FSIZE'})")
        yield service
    finally:
        service.close()
        disk.close()
        shutil.rmtree(disk.path.parent, ignore_errors=True)


def test_killed_worker_fails_its_job_and_every_queued_job_still_runs(embedded: Embedded) -> None:
    """SIGKILL a worker mid-job while other jobs wait: only its own job fails."""
    with embedded.client() as client:
        victim = _post(client, SLOW_SPEC, {**SLOW, "samples": 32})
        bystander = _post(client, SLOW_SPEC, {**SLOW, "samples": 2, "seed": 1})
        victim_pid = worker_pid(embedded.data_dir, victim["id"])
        worker_pid(embedded.data_dir, bystander["id"])
        innocents = [_post(client, spec_mlp(width=5 + i, name=f"innocent-{i}"), SMALL)
                     for i in range(4)]
        assert [_status(client, job) for job in innocents] == ["queued"] * 4

        os.kill(victim_pid, signal.SIGKILL)

        failed = wait_for_status(client, victim["id"], FINAL, timeout=30)
        assert failed["status"] == "failed", dump(failed)
        assert failed["error"]["type"] == "worker_lost"
        assert "killed by SIGKILL" in failed["error"]["detail"]
        assert failed["error"]["context"] == {"exit_code": -signal.SIGKILL}
        assert failed["finished_at"] is not None
        for job in [bystander, *innocents]:
            done = wait_for_status(client, job["id"], FINAL, timeout=90)
            assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None), \
                dump(done)
        # The pool replaced the dead process: new jobs run, on a different process.
        after = _post(client, spec_mlp(width=19, name="after-kill"), SMALL, wait=60)
        assert after["status"] == "succeeded", dump(after)
        store = embedded.store()
        try:
            record = store.get(after["id"])
            assert record is not None
            assert record.worker is not None
            assert int(record.worker.rsplit(":", 1)[1]) != victim_pid
        finally:
            store.dispose()


def test_full_disk_refuses_uploads_cleanly_and_leaves_nothing(embedded: Embedded) -> None:
    """The data directory fills up: 507 with a JSON error, no partial file, still serving."""
    staging, jobs = embedded.data_dir / "staging", embedded.data_dir / "jobs"
    jobs_before = listing(jobs)
    with embedded.client() as client:
        total_before = client.get("/v1/diagnoses").json()["total"]
        if embedded.disk.mounted:
            ballast = embedded.disk.fill(leave=256 * 1024)
            model = os.urandom(2 * MIB)  # fits the upload limit, not the disk
        else:
            ballast = None
            model = os.urandom(embedded.disk.size + MIB)  # past the server's RLIMIT_FSIZE
        try:
            upload = client.post("/v1/diagnoses", files={
                "model": ("big.onnx", model, "application/octet-stream")})
            body = _assert_clean_error(upload, 507, "insufficient_storage")
            assert "space" in body["detail"]
            if ballast is not None:
                embedded.disk.fill(leave=0)  # now not even a small spec fits
                spec = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=3)})
                _assert_clean_error(spec, 507, "insufficient_storage")
                # Completely full: even the upload's staging folder cannot be created.
                embedded.disk.use_all_inodes()
                spec = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=3)})
                _assert_clean_error(spec, 507, "insufficient_storage")
            # Reading still works while the disk is full.
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/diagnoses").json()["total"] == total_before
        finally:
            if ballast is not None:
                ballast.unlink()
                shutil.rmtree(embedded.data_dir / "ballast-inodes", ignore_errors=True)
        # Nothing half-written: no staging folder left, no job folder without a job.
        wait_until(lambda: not listing(staging), 10, "staging folders removed")
        assert listing(jobs) == jobs_before
        done = _post(client, spec_mlp(width=3, name="after-full"), SMALL, wait=60)
        assert done["status"] == "succeeded", dump(done)
        assert client.get("/v1/diagnoses").json()["total"] == total_before + 1


class _QuietRunner:
    """A runner that runs nothing: the test below is about what happens before a worker."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def enqueue(self, job_id: str) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    def check(self) -> None: ...
    def queue_depth(self) -> int | None:
        return 0

    def pending_ids(self) -> set[str] | None:
        return None


def test_store_failing_after_the_upload_leaves_no_job_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are in place when the job record cannot be written (SQLite on a full disk, a
    database gone): a clean 507 / 503, and no job folder without its record."""
    app = create_app(Settings(data_dir=tmp_path), runner=_QuietRunner())
    with TestClient(app) as client:
        store = app.state.jobs.store
        for cause, status, error in [
            (sqlite3.OperationalError("database or disk is full"), 507, "insufficient_storage"),
            (sqlite3.OperationalError("unable to open database file"), 503, "store_unavailable"),
        ]:
            def fail(record: object, cause: Exception = cause) -> None:
                raise OperationalError("INSERT INTO graddoctor_jobs ...", {}, cause)

            monkeypatch.setattr(store, "add", fail)
            answer = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=3)})
            _assert_clean_error(answer, status, error)
    assert listing(tmp_path / "jobs") == set()
    assert listing(tmp_path / "staging") == set()


def test_client_vanishing_mid_upload_leaves_nothing(embedded: Embedded) -> None:
    """A client that dies halfway through an upload leaves no staging file and no job."""
    staging = embedded.data_dir / "staging"
    with embedded.client() as client:
        total_before = client.get("/v1/diagnoses").json()["total"]
    head = (b"--b\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m.onnx\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/diagnoses HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 4194304\r\n\r\n" + head + b"\0" * (512 * 1024))
        wait_until(lambda: bool(listing(staging)), 10, "the upload reached the staging folder")
    wait_until(lambda: not listing(staging), 15, "the abandoned upload's staging folder removed")
    with embedded.client() as client:
        assert client.get("/v1/diagnoses").json()["total"] == total_before
        assert client.get("/healthz").status_code == 200


FLOOD_CLIENTS, FLOOD_REQUESTS = 40, 5
# Each client's first submission is new work for the pool; the others repeat one of a few
# specs whose result exists, so they are answered from it at once (a job with reused_from).
# 40 real runs drain the queue under load without making the test minutes long on 2 cores.
FLOOD_REPEATS = [spec_mlp(depth=1, width=3 + k, name=f"flood-repeat-{k}") for k in range(4)]


def _flood_spec(client: int, request: int) -> tuple[dict[str, Any], dict[str, str]]:
    if request == 0:
        return spec_mlp(depth=1, width=3 + client % 7, name=f"flood-{client}"), {"reuse": "false"}
    return FLOOD_REPEATS[(client + request) % len(FLOOD_REPEATS)], {}


async def _flood(base_url: str) -> list[tuple[int, dict[str, Any]]]:
    async def one_client(index: int) -> list[tuple[int, dict[str, Any]]]:
        answers = []
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            for request in range(FLOOD_REQUESTS):
                spec, params = _flood_spec(index, request)
                answer = await client.post("/v1/diagnoses", params=params,
                                           json={"spec": spec, "config": SMALL})
                answers.append((answer.status_code, answer.json()))
        return answers

    results = await asyncio.gather(*(one_client(i) for i in range(FLOOD_CLIENTS)))
    return [answer for answers in results for answer in answers]


def test_flood_of_clients_every_accepted_job_finishes(embedded: Embedded) -> None:
    """40 clients x 5 submissions at once: no 5xx, none lost, the metrics agree."""
    with embedded.client() as client:
        for job in [_post(client, spec, SMALL) for spec in FLOOD_REPEATS]:
            assert wait_for_status(client, job["id"], FINAL)["status"] == "succeeded"
        before = parse_metrics(client.get("/metrics").text)
        started = time.monotonic()
        answers = asyncio.run(_flood(embedded.proc.base_url))  # type: ignore[union-attr]
        submitted = time.monotonic() - started
        assert not [body for status, body in answers if status >= 500]
        assert sorted({status for status, _ in answers}) == [200, 202], answers[:3]
        ids = {body["id"] for _, body in answers}
        assert len(ids) == FLOOD_CLIENTS * FLOOD_REQUESTS
        reused = sum(1 for _, body in answers if body["reused_from"])
        assert reused >= FLOOD_CLIENTS * (FLOOD_REQUESTS - 1)

        def all_finished() -> bool:
            metrics = parse_metrics(client.get("/metrics").text)
            return (metrics['graddoctor_jobs{status="queued"}']
                    + metrics['graddoctor_jobs{status="running"}']) == 0

        wait_until(all_finished, 120, "every flood job finished", interval=0.5)
        finished = time.monotonic() - started
        jobs = [client.get(f"/v1/diagnoses/{job_id}").json() for job_id in ids]
        assert {job["status"] for job in jobs} == {"succeeded"}, \
            [dump(job) for job in jobs if job["status"] != "succeeded"][:3]
        after = parse_metrics(client.get("/metrics").text)
    count, ran = len(ids), len(ids) - reused
    assert after['graddoctor_jobs{status="succeeded"}'] == \
        before['graddoctor_jobs{status="succeeded"}'] + count
    for status in ("failed", "cancelled", "queued", "running"):
        assert after[f'graddoctor_jobs{{status="{status}"}}'] == \
            before[f'graddoctor_jobs{{status="{status}"}}']
    # Only jobs that ran have a duration; a reused result has none.
    assert after["graddoctor_job_duration_seconds_count"] == \
        before["graddoctor_job_duration_seconds_count"] + ran
    assert after["graddoctor_queue_depth"] == 0
    mean = ((after["graddoctor_job_duration_seconds_sum"]
             - before["graddoctor_job_duration_seconds_sum"]) / max(ran, 1))
    print(f"\nflood: {count} jobs accepted in {submitted:.1f} s ({ran} ran, mean "
          f"{mean:.2f} s each), all succeeded after {finished:.1f} s")


def test_graceful_restart_mid_job_loses_nothing(embedded: Embedded) -> None:
    """SIGTERM the API while jobs run and wait: nothing stays running, queued jobs run after."""
    old = embedded.proc
    assert old is not None
    assert old.process is not None
    with old.client() as client:
        running = [_post(client, SLOW_SPEC, {**SLOW, "samples": 32, "seed": 40 + i})
                   for i in range(2)]
        for job in running:
            worker_pid(embedded.data_dir, job["id"])
        queued = [_post(client, spec_mlp(width=6 + i, name=f"restart-{i}"), SMALL)
                  for i in range(3)]
        assert [_status(client, job) for job in queued] == ["queued"] * 3
        total = client.get("/v1/diagnoses").json()["total"]

    old.terminate()
    # uvicorn ends by re-raising SIGTERM once its shutdown is complete.
    assert old.process.wait(30) in (0, -signal.SIGTERM), old.log()[-3000:]
    assert "Application shutdown complete" in old.log()
    # The API took its worker processes with it.
    wait_until(lambda: not group_alive(old.process.pid), 15, "old worker processes gone")
    store = embedded.store()
    try:
        states = {job["id"]: store.get(job["id"]) for job in running + queued}
    finally:
        store.dispose()
    for job in running:
        record = states[job["id"]]
        assert record is not None
        assert (record.status, record.error_type) == ("failed", "worker_lost")
        assert "stopped" in (record.error_detail or "")
    assert [states[job["id"]].status for job in queued] == ["queued"] * 3  # type: ignore[union-attr]

    again = embedded.start("faults-embedded-restarted")
    with again.client() as client:
        assert client.get("/v1/diagnoses").json()["total"] == total  # every job persisted
        for job in queued:
            done = wait_for_status(client, job["id"], FINAL, timeout=90)
            assert done["status"] == "succeeded", dump(done)
        for job in running:
            lost = client.get(job["links"]["self"]).json()
            assert lost["status"] == "failed", dump(lost)
            assert lost["error"]["type"] == "worker_lost"
        assert parse_metrics(client.get("/metrics").text)['graddoctor_jobs{status="running"}'] == 0


# === Distributed mode ========================================================================

# Jobs that keep a worker busy take a few seconds on a loaded 2-core machine: the time limit
# leaves them a wide margin. The visibility timeout must be longer, as the settings require.
JOB_TIME_LIMIT_S = 15.0
VISIBILITY_TIMEOUT_S = 18.0
QUEUE = "graddoctor-faults"


@dataclass
class Cluster:
    """API + 2 Celery workers on a private Redis and a private PostgreSQL cluster."""

    redis: PrivateRedis
    pg: PrivatePostgres
    data_dir: Path
    settings: dict[str, Any]
    api: ServiceProcess
    workers: list[ServiceProcess]

    @property
    def store_url(self) -> str:
        return f"postgresql+psycopg://{self.pg.url.split('://', 1)[1]}"

    def store(self) -> Store:
        return Store(self.store_url)

    def queue_length(self) -> int:
        client = self.redis.client()
        try:
            return int(client.llen(QUEUE))  # type: ignore[attr-defined]
        finally:
            client.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def cluster(start_service: StartService,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = temp_folder("graddoctor-faults-redis-")
    pg_folder = temp_folder("graddoctor-faults-pg-")
    redis, pg = PrivateRedis(folder), PrivatePostgres(pg_folder)
    processes: list[ServiceProcess] = []
    try:
        started = time.monotonic()
        redis.start()
        pg.init().start()
        data_dir = tmp_path_factory.mktemp("faults-cluster-data")
        settings: dict[str, Any] = {
            "broker_url": redis.url, "database_url": pg.url, "queue": QUEUE,
            "job_max_attempts": 2, "job_time_limit_s": JOB_TIME_LIMIT_S,
            "broker_visibility_timeout_s": VISIBILITY_TIMEOUT_S, "sweep_interval_s": 1,
            "torch_threads": 1}  # 2 workers on 2 cores: no oversubscribed, spinning threads
        processes += [start_service(["worker", "--concurrency", "1", "--name", f"f{i}@%h"],
                                    data_dir=data_dir, name=f"faults-worker-{i}", **settings)
                      for i in range(2)]
        api = start_service(["serve"], data_dir=data_dir, name="faults-api", **settings)
        processes.append(api)
        api.wait_ready()
        for worker in processes[:2]:
            worker.wait_log(" warm in ")
        print(f"\nfaults: cluster (private redis + postgres, 2 workers) ready in "
              f"{time.monotonic() - started:.1f} s")
        yield Cluster(redis, pg, data_dir, settings, api, processes[:2])
    finally:
        for proc in processes:  # throwaway processes: no need to wait for a graceful stop
            proc.kill()
        redis.close()
        pg.close()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)


def test_redis_outage_refuses_cleanly_and_loses_no_accepted_job(cluster: Cluster) -> None:
    """Redis dies with jobs in it: 503s that say why, then recovery, and every job finishes."""
    with cluster.api.client() as client:
        # Two jobs keep both workers busy; the next two wait in Redis (no prefetching).
        busy = [_post(client, BUSY_SPEC, {**SLOW, "samples": 2, "seed": 50 + i})
                for i in range(2)]
        waiting = [_post(client, spec_mlp(width=4 + i, name=f"in-redis-{i}"), SMALL)
                   for i in range(2)]
        for job in busy:
            worker_pid(cluster.data_dir, job["id"], cluster.store_url)
        assert cluster.queue_length() == 2  # their messages exist only in Redis
        assert [_status(client, job) for job in waiting] == ["queued"] * 2
        total = client.get("/v1/diagnoses").json()["total"]
        files = listing(cluster.data_dir / "jobs")

        cluster.redis.kill()  # no persistence: the two queued messages are gone for good

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert ready.json()["checks"]["store"] == "ok"
        assert ready.json()["checks"]["queue"].startswith(
            "unavailable: the broker (redis) is unreachable")
        refused = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=3), "config": SMALL})
        body = _assert_clean_error(refused, 503, "service_unavailable")
        assert "queue is unreachable" in body["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get(busy[0]["links"]["self"]).status_code == 200
        assert client.get("/metrics").status_code == 200
        # The refused submission left neither a record nor files.
        assert client.get("/v1/diagnoses").json()["total"] == total
        assert listing(cluster.data_dir / "jobs") == files
        assert cluster.api.process is not None
        assert cluster.api.process.poll() is None

        cluster.redis.start()  # same port, empty

        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "/readyz 200 again")
        for job in busy + waiting:
            done = wait_for_status(client, job["id"], FINAL, timeout=90)
            assert (done["status"], done["attempts"]) == ("succeeded", 1), dump(done)
        after = _post(client, spec_mlp(width=3, name="after-redis"), SMALL, wait=60)
        assert after["status"] == "succeeded", dump(after)
    assert "sent again" in cluster.api.log()


def test_postgres_restart_fails_requests_cleanly_then_recovers(cluster: Cluster) -> None:
    """PostgreSQL stops: every store-backed request is a clean 503; after restart all works."""
    with cluster.api.client() as client:
        before = _post(client, spec_mlp(width=5, name="before-pg"), SMALL, wait=60)
        assert before["status"] == "succeeded", dump(before)
        cluster.pg.stop()
        try:
            for method, path, kwargs in [
                ("GET", "/v1/diagnoses", {}),
                ("GET", before["links"]["self"], {}),
                ("DELETE", before["links"]["self"], {}),
                ("POST", "/v1/diagnoses", {"json": {"spec": spec_mlp(width=6)}}),
                ("GET", "/metrics", {}),
            ]:
                answer = client.request(method, path, **kwargs)
                _assert_clean_error(answer, 503, "store_unavailable")
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["store"].startswith("unavailable")
            assert ready.json()["checks"]["queue"] == "ok"
            assert client.get("/healthz").status_code == 200
        finally:
            cluster.pg.start()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "/readyz 200 again")
        again = client.get(before["links"]["self"]).json()
        assert again["status"] == "succeeded"
        after = _post(client, spec_mlp(width=7, name="after-pg"), SMALL, wait=60)
        assert after["status"] == "succeeded", dump(after)
    assert cluster.api.process is not None
    assert cluster.api.process.poll() is None


def test_celery_time_limit_fails_the_job_naming_the_limit(cluster: Cluster) -> None:
    with cluster.api.client() as client:
        job = _post(client, SLOW_SPEC, {**SLOW, "samples": 64, "seed": 60})
        done = wait_for_status(client, job["id"], FINAL, timeout=JOB_TIME_LIMIT_S + 60)
        assert done["status"] == "failed", dump(done)
        assert done["error"]["type"] == "job_time_limit"
        assert done["error"]["context"] == {"limit": "job_time_limit_s",
                                            "limit_value": JOB_TIME_LIMIT_S}
        assert f"{JOB_TIME_LIMIT_S:g} s" in done["error"]["detail"]
        assert done["attempts"] == 1
        after = _post(client, spec_mlp(width=8, name="after-limit"), SMALL, wait=60)
        assert after["status"] == "succeeded", dump(after)


def test_killed_worker_main_process_job_finishes_on_another_worker(cluster: Cluster) -> None:
    """SIGKILL a Celery worker's main process (its child dies with it): within the visibility
    timeout the other worker takes the job over, counted as a second attempt."""
    with cluster.api.client() as client:
        job = _post(client, BUSY_SPEC, {**SLOW, "samples": 2, "seed": 70})
        child = worker_pid(cluster.data_dir, job["id"], cluster.store_url)
        main = parent_pid(child)
        victim = next(w for w in cluster.workers if w.process and w.process.pid == main)
        survivor = next(w for w in cluster.workers if w is not victim)
        assert victim.process is not None
        killed = time.monotonic()
        os.kill(main, signal.SIGKILL)
        victim.process.wait(10)
        wait_until(lambda: not group_alive(main), 10, "the killed worker's child gone")
        assert _status(client, job) == "running"  # nobody could record anything
        done = wait_for_status(client, job["id"], FINAL, timeout=VISIBILITY_TIMEOUT_S + 60)
        took = time.monotonic() - killed
        assert (done["status"], done["attempts"]) == ("succeeded", 2), dump(done)
        # Taken over once the visibility timeout passed (plus a restore scan and the run).
        assert VISIBILITY_TIMEOUT_S - 2 <= took < VISIBILITY_TIMEOUT_S + 45
    store = cluster.store()
    try:
        record = store.get(job["id"])
    finally:
        store.dispose()
    assert record is not None
    assert record.worker is not None
    assert parent_pid(int(record.worker.rsplit(":", 1)[1])) == survivor.process.pid  # type: ignore[union-attr]
    print(f"\nkilled worker: job finished on the other worker {took:.1f} s after the kill")


RETENTION_HOURS = 0.0005  # 1.8 s


def test_retention_deletes_finished_jobs_and_files_never_active_ones(
        cluster: Cluster, start_service: StartService) -> None:
    """An API with a tiny retention: finished jobs and their folders go; active jobs stay."""
    retention_s = RETENTION_HOURS * 3600
    keeper = start_service(["serve"], data_dir=cluster.data_dir, name="faults-retention-api",
                           **{**cluster.settings, "retention_hours": RETENTION_HOURS,
                              "sweep_interval_s": 0.25}).wait_ready()
    jobs_dir = cluster.data_dir / "jobs"
    try:
        with keeper.client() as client:
            old = _post(client, spec_mlp(width=9, name="expires"), SMALL, wait=60)
            assert old["status"] == "succeeded", dump(old)
            # The page is drawn right after the result is stored; GET /report waits for it.
            assert client.get(f"/v1/diagnoses/{old['id']}/report").status_code == 200
            assert {"spec.json", "report.html"} <= listing(jobs_dir / old["id"])
            running = _post(client, SLOW_SPEC, {**SLOW, "samples": 64, "seed": 80})
            worker_pid(cluster.data_dir, running["id"], cluster.store_url)
            running_since = time.monotonic()
            queued = _post(client, spec_mlp(width=10, name="waits"), SMALL)
            assert _status(client, queued) == "queued"  # one worker left, and it is busy

            def gone(job: dict[str, Any]) -> bool:
                return (client.get(job["links"]["self"]).status_code == 404
                        and not (jobs_dir / job["id"]).exists())

            wait_until(lambda: gone(old), retention_s + 15, "the expired job and its folder")
            # Older than the retention time by now, but active: kept, with their files.
            time.sleep(max(0.0, retention_s + 1 - (time.monotonic() - running_since)))
            assert _status(client, running) == "running"
            assert _status(client, queued) == "queued"
            assert (jobs_dir / running["id"] / "spec.json").exists()
            assert (jobs_dir / queued["id"] / "spec.json").exists()

            assert client.delete(running["links"]["self"]).json()["status"] == "cancelled"
            done = wait_for_status(client, queued["id"], FINAL, timeout=90)
            assert done["status"] == "succeeded", dump(done)
            wait_until(lambda: gone(running) and gone(queued), retention_s + 15,
                       "the finished jobs and their folders")
            # Every earlier test's job was finished long ago: none is left, nor any folder.
            wait_until(lambda: client.get("/v1/diagnoses").json()["total"] == 0, 15,
                       "every finished job deleted")
            assert listing(jobs_dir) == set()
    finally:
        keeper.kill()
