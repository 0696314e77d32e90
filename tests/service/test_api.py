"""The HTTP contract, in-process (TestClient) with a runner that only records job ids.

No worker runs here: these tests cover validation, errors, auth, listing and the OpenAPI
document. Jobs that really run are in test_server.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import ServiceUnavailableError
from service.settings import Settings
from tests.service.conftest import npz_bytes, onnx_mlp
from tests.spec_builders import spec_mlp

KEYS = ("key-alice", "key-bob")


class RecordingRunner:
    def __init__(self) -> None:
        self.enqueued: list[str] = []
        self.cancelled: list[str] = []
        self.down = False

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def enqueue(self, job_id: str) -> None:
        if self.down:
            raise ServiceUnavailableError("the job queue is unreachable")
        self.enqueued.append(job_id)

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def check(self) -> None:
        if self.down:
            raise ServiceUnavailableError("down")

    def queue_depth(self) -> int | None:
        return len(self.enqueued)


def _client(tmp_path: Path, **settings: Any) -> Iterator[tuple[TestClient, RecordingRunner]]:
    runner = RecordingRunner()
    app = create_app(Settings(data_dir=tmp_path, **settings), runner=runner)
    with TestClient(app) as client:
        yield client, runner


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, RecordingRunner]]:
    yield from _client(tmp_path, max_upload_bytes=64 * 1024)


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[TestClient, RecordingRunner]]:
    yield from _client(tmp_path, api_keys=",".join(KEYS))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_json_spec_is_queued_with_location(api: tuple[TestClient, RecordingRunner]) -> None:
    client, runner = api
    answer = client.post("/v1/diagnoses", json={"spec": spec_mlp(), "config": {"samples": 1}})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] == "queued"
    assert job["kind"] == "spec"
    assert job["result"] is None
    assert answer.headers["location"] == f"/v1/diagnoses/{job['id']}"
    assert runner.enqueued == [job["id"]]
    assert len(job["id"]) >= 22  # 128 random bits
    assert client.get(job["links"]["self"]).json()["status"] == "queued"


def test_onnx_upload_with_inputs_and_config(api: tuple[TestClient, RecordingRunner],
                                            tmp_path: Path) -> None:
    import numpy as np

    client, _ = api
    files = {"model": ("../../etc/my model.onnx", onnx_mlp(), "application/octet-stream"),
             "inputs": ("x.npz", npz_bytes(x=np.ones((4, 8), np.float32)), "application/zip")}
    answer = client.post("/v1/diagnoses", files=files, data={"config": '{"samples": 2}'})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "onnx"
    assert job["filename"] == "my model.onnx"
    folder = tmp_path / "jobs" / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["inputs.npz", "model.onnx"]
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        pytest.param({"content": b"x", "headers": {"content-type": "text/plain"}}, 415,
                     "unsupported_media_type", id="wrong-media-type"),
        pytest.param({"content": b"{", "headers": {"content-type": "application/json"}}, 400,
                     "invalid_json", id="truncated-json"),
        pytest.param({"content": b'{"spec": {"a": NaN}}',
                      "headers": {"content-type": "application/json"}}, 400, "invalid_json",
                     id="nan-in-json"),
        pytest.param({"content": b'{"spec": {"a": 1e999}}',
                      "headers": {"content-type": "application/json"}}, 400, "invalid_json",
                     id="overflow-to-infinity"),
        pytest.param({"content": b"[" * 100_000 + b"]" * 100_000,
                      "headers": {"content-type": "application/json"}}, 413,
                     "payload_too_large", id="over-the-limit"),
        pytest.param({"content": b"[" * 30_000 + b"]" * 30_000,
                      "headers": {"content-type": "application/json"}}, 400, "invalid_json",
                     id="deep-nesting"),
        pytest.param({"json": {"config": {}}}, 422, "validation_error", id="spec-missing"),
        pytest.param({"json": {"spec": [], "config": {}}}, 422, "validation_error",
                     id="spec-not-object"),
        pytest.param({"json": {"spec": {}, "extra": 1}}, 422, "validation_error",
                     id="unknown-field"),
        pytest.param({"json": {"spec": {}, "config": {"batch_size": 0}}}, 422,
                     "invalid_config", id="config-out-of-range"),
        pytest.param({"json": {"spec": {}, "config": {"bogus": 1}}}, 422, "invalid_config",
                     id="config-unknown-field"),
        pytest.param({"files": {"inputs": ("x.npz", b"PK\x03\x04", "application/zip")}}, 422,
                     "validation_error", id="model-part-missing"),
        pytest.param({"files": {"model": ("m.onnx", b"", "application/octet-stream")}}, 422,
                     "validation_error", id="model-empty"),
        pytest.param({"files": {"model": ("m.onnx", b"x", "application/octet-stream"),
                                "inputs": ("x.npz", b"not a zip", "application/zip")}}, 422,
                     "validation_error", id="inputs-not-npz"),
        pytest.param({"files": {"model": ("m.onnx", b"x", "application/octet-stream"),
                                "weights": ("w.bin", b"x", "application/octet-stream")}}, 400,
                     "bad_request", id="unexpected-part"),
        pytest.param({"files": {"model": ("m.onnx", b"x", "application/octet-stream")},
                      "data": {"config": "[1, 2]"}}, 422, "validation_error",
                     id="config-not-object"),
        pytest.param({"files": {"model": ("m.onnx", b"x", "application/octet-stream")},
                      "data": {"config": '{"samples": Infinity}'}}, 400, "invalid_json",
                     id="config-infinity"),
    ],
)
def test_bad_submissions_are_clear_4xx(api: tuple[TestClient, RecordingRunner],
                                       kwargs: dict[str, Any], status: int, error: str) -> None:
    client, runner = api
    answer = client.post("/v1/diagnoses", **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error, body
    assert body["detail"]
    assert runner.enqueued == []


def test_duplicate_part_is_refused(api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    files = [("model", ("a.onnx", b"x", "application/octet-stream")),
             ("model", ("b.onnx", b"y", "application/octet-stream"))]
    answer = client.post("/v1/diagnoses", files=files)
    assert answer.status_code == 400
    assert "more than once" in answer.json()["detail"]


def test_upload_limit_holds_without_content_length(api: tuple[TestClient, RecordingRunner],
                                                   tmp_path: Path) -> None:
    client, _ = api

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to trust
        yield b'{"spec": {"x": "'
        for _ in range(200):
            yield b"a" * 1024
        yield b'"}}'

    answer = client.post("/v1/diagnoses", content=body(),
                         headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["limit"] == 64 * 1024
    assert list((tmp_path / "staging").iterdir()) == []


def test_field_errors_name_the_field(api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    answer = client.post("/v1/diagnoses", json={"spec": {}, "config": {"samples": 0}})
    assert answer.json()["field"] == "samples"
    assert "samples" in answer.json()["detail"]
    answer = client.post("/v1/diagnoses?wait=61", json={"spec": {}})
    assert answer.status_code == 422
    assert answer.json() | {"detail": ""} == {"error": "validation_error", "detail": "",
                                              "field": "query.wait"}


def test_queue_down_is_503_and_nothing_is_kept(api: tuple[TestClient, RecordingRunner]) -> None:
    client, runner = api
    runner.down = True
    answer = client.post("/v1/diagnoses", json={"spec": spec_mlp()})
    assert answer.status_code == 503
    assert answer.json()["error"] == "service_unavailable"
    assert client.get("/v1/diagnoses").json()["total"] == 0
    assert client.get("/readyz").status_code == 503


def test_unknown_job_and_route_are_json_404(api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    for path in ("/v1/diagnoses/nope", "/v1/diagnoses/nope/report", "/nowhere"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"


def test_list_is_newest_first_and_paginated(api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    ids = [client.post("/v1/diagnoses", json={"spec": spec_mlp(width=w)}).json()["id"]
           for w in (4, 5, 6)]
    page = client.get("/v1/diagnoses?limit=2").json()
    assert [item["id"] for item in page["items"]] == ids[::-1][:2]
    assert page["total"] == 3
    assert page["next"] == "/v1/diagnoses?limit=2&offset=2"
    assert "result" not in page["items"][0]
    last = client.get(page["next"]).json()
    assert [item["id"] for item in last["items"]] == ids[:1]
    assert last["next"] is None


def test_delete_cancels_queued_then_deletes(api: tuple[TestClient, RecordingRunner],
                                            tmp_path: Path) -> None:
    client, runner = api
    job = client.post("/v1/diagnoses", json={"spec": spec_mlp()}).json()
    cancelled = client.delete(f"/v1/diagnoses/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert runner.cancelled == [job["id"]]
    report = client.get(f"/v1/diagnoses/{job['id']}/report")
    assert report.status_code == 409
    assert report.json()["status"] == "cancelled"
    assert client.delete(f"/v1/diagnoses/{job['id']}").status_code == 204
    assert client.get(f"/v1/diagnoses/{job['id']}").status_code == 404
    assert not (tmp_path / "jobs" / job["id"]).exists()


def test_api_keys_gate_v1_and_isolate_jobs(keyed: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = keyed
    assert client.post("/v1/diagnoses", json={"spec": spec_mlp()}).status_code == 401
    wrong = client.get("/v1/diagnoses", headers=_bearer("key-mallory"))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    job = client.post("/v1/diagnoses", json={"spec": spec_mlp()},
                      headers=_bearer("key-alice")).json()
    mine = client.get(f"/v1/diagnoses/{job['id']}", headers=_bearer("key-alice"))
    assert mine.status_code == 200
    for method in ("get", "delete"):
        theirs = client.request(method, f"/v1/diagnoses/{job['id']}", headers=_bearer("key-bob"))
        assert theirs.status_code == 404
    assert client.get("/v1/diagnoses", headers=_bearer("key-bob")).json()["total"] == 0
    assert client.get("/healthz").status_code == 200  # health stays open


def test_openapi_documents_every_route_with_examples(
        api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/diagnoses", "/v1/diagnoses/{job_id}", "/v1/diagnoses/{job_id}/report",
            "/healthz", "/readyz", "/metrics"} <= set(paths)
    create = paths["/v1/diagnoses"]["post"]
    content = create["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["model"]["format"] == "binary"
    assert content["application/json"]["examples"]
    assert {"202", "200", "413", "415", "422"} <= set(create["responses"])
    for path, methods in paths.items():
        for method, operation in methods.items():
            assert operation.get("description"), f"{method} {path} has no description"
    docs = client.get("/docs").text
    assert "cdn." not in docs
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_metrics_are_prometheus_text(api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    client.post("/v1/diagnoses", json={"spec": spec_mlp()})
    answer = client.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = answer.text.splitlines()
    assert 'graddoctor_jobs{status="queued"} 1' in lines
    assert 'graddoctor_job_duration_seconds_bucket{le="+Inf"} 0' in lines
    assert "graddoctor_queue_depth 1" in lines
    assert all(line.startswith(("#", "graddoctor_")) for line in lines)


def test_error_bodies_never_echo_huge_input(api: tuple[TestClient, RecordingRunner]) -> None:
    client, _ = api
    answer = client.get("/v1/diagnoses/" + "a" * 5000)
    assert answer.status_code == 404
    assert len(json.dumps(answer.json())) < 400
