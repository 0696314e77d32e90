"""Access control on a real `graddoctor serve` with GRADDOCTOR_API_KEYS set.

Every ``/v1`` operation the OpenAPI document lists needs a valid key (401 with a JSON body
otherwise); a key never sees, lists, cancels, deletes or downloads another key's job (404, the
same answer as for an id that never existed); job ids are random 128-bit tokens; keys appear
nowhere in the server's log output or its data directory.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.service.conftest import WORKER_READY, ServiceProcess, StartService, dump
from tests.spec_builders import spec_mlp

pytestmark = pytest.mark.service

SMALL = {"samples": 1, "verify_remedies": False}


@dataclass(frozen=True)
class Keys:
    alice: str
    bob: str
    mallory: str  # never configured


@pytest.fixture(scope="module")
def keys() -> Keys:
    # Random, so that finding one in a log can only mean it was logged.
    return Keys(*(f"{name}-{secrets.token_urlsafe(24)}" for name in ("alice", "bob", "mallory")))


@pytest.fixture(scope="module")
def keyed(start_service: StartService, keys: Keys) -> ServiceProcess:
    return start_service(["serve", "--workers", "1"], name="serve-keys",
                         api_keys=f" {keys.alice} ,{keys.bob}").wait_ready().wait_log(WORKER_READY)


def _client(proc: ServiceProcess, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=proc.base_url, headers=headers, timeout=90)


@pytest.fixture(scope="module")
def alice_job(keyed: ServiceProcess, keys: Keys) -> dict[str, Any]:
    """A finished job of alice's (an ONNX upload would add a repaired model; a spec suffices)."""
    with _client(keyed, keys.alice) as client:
        job = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=6), "config": SMALL},
                          params={"wait": 60}).json()
    assert job["status"] == "succeeded", dump(job)
    return job


def _v1_operations(proc: ServiceProcess) -> Iterator[tuple[str, str]]:
    document = httpx.get(f"{proc.base_url}/openapi.json", timeout=10).json()
    for path, methods in document["paths"].items():
        if path.startswith("/v1"):
            for method in methods:
                yield method.upper(), path


def _fill(path: str, job_id: str) -> str:
    return path.replace("{job_id}", job_id).replace("{remedy_id}", "r1")


def _assert_401(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    body = answer.json()
    assert body["error"] == "unauthorized", body
    assert "API key" in body["detail"], body


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer", id="bearer-without-key"),
        pytest.param("Token {alice}", id="valid-key-other-scheme"),
        pytest.param("Basic YWxpY2U6cGFzc3dvcmQ=", id="basic-auth"),
        pytest.param("Bearer {mallory}", id="unknown-key"),
        pytest.param("Bearer {alice_prefix}", id="prefix-of-a-key"),
        pytest.param("Bearer {alice}x", id="key-plus-suffix"),
        pytest.param("Bearer {alice},{bob}", id="two-keys-joined"),
        pytest.param("{alice}", id="key-without-scheme"),
    ],
)
def test_every_v1_operation_needs_a_valid_key(keyed: ServiceProcess, keys: Keys,
                                              alice_job: dict[str, Any],
                                              authorization: str | None) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(
            mallory=keys.mallory, alice=keys.alice, bob=keys.bob,
            alice_prefix=keys.alice[: len(keys.alice) // 2])
    operations = list(_v1_operations(keyed))
    assert len(operations) >= 6, operations  # submit, list, read, cancel, report, repaired model
    with httpx.Client(base_url=keyed.base_url, timeout=30) as client:
        for method, path in operations:
            answer = client.request(method, _fill(path, alice_job["id"]), headers=headers,
                                    json={"spec": spec_mlp()} if method == "POST" else None)
            _assert_401(answer)
        assert client.get(alice_job["links"]["self"],
                          headers={"Authorization": f"Bearer {keys.alice}"}).status_code == 200


def test_health_and_docs_stay_open(keyed: ServiceProcess) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{keyed.base_url}{path}", timeout=10).status_code == 200, path


def test_a_key_never_reaches_another_keys_job(keyed: ServiceProcess, keys: Keys,
                                              alice_job: dict[str, Any]) -> None:
    job_id = alice_job["id"]
    never = secrets.token_urlsafe(16)  # an id that does not exist
    with _client(keyed, keys.alice) as alice, _client(keyed, keys.bob) as bob:
        assert alice.get(f"/v1/diagnoses/{job_id}/report").status_code == 200
        for method, path in _v1_operations(keyed):
            if "{job_id}" not in path:
                continue
            theirs = bob.request(method, _fill(path, job_id))
            missing = bob.request(method, _fill(path, never))
            assert theirs.status_code == 404, (method, path, theirs.text)
            # Indistinguishable from an id that never existed: same status, type and wording.
            assert theirs.json()["error"] == missing.json()["error"] == "not_found"
            assert theirs.json()["detail"].replace(job_id, never) == missing.json()["detail"]
        listed = bob.get("/v1/diagnoses").json()
        assert job_id not in {item["id"] for item in listed["items"]}
        # The same spec from bob is diagnosed afresh, never answered from alice's result.
        again = bob.post("/v1/diagnoses", json={"spec": spec_mlp(width=6), "config": SMALL},
                         params={"wait": 60}).json()
        assert again["reused_from"] is None, dump(again)
        assert again["status"] == "succeeded", dump(again)
        # Bob's DELETE changed nothing: alice's job and report are still hers.
        mine = alice.get(f"/v1/diagnoses/{job_id}").json()
        assert mine["status"] == "succeeded"
        assert mine["result"] == alice_job["result"]
        alices = {item["id"] for item in alice.get("/v1/diagnoses").json()["items"]}
        assert job_id in alices
        assert again["id"] not in alices


def test_job_ids_are_random_128_bit_tokens(keyed: ServiceProcess, keys: Keys) -> None:
    with _client(keyed, keys.alice) as client:
        ids = []
        for _ in range(12):  # identical submissions: ids depend on nothing the client sends
            answer = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=3)},
                                 params={"reuse": "false"})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
            client.delete(f"/v1/diagnoses/{ids[-1]}")  # cancel: keep the worker free
    assert len(set(ids)) == len(ids)
    raw = [base64.urlsafe_b64decode(job_id + "=" * (-len(job_id) % 4)) for job_id in ids]
    assert all(len(value) >= 16 for value in raw), ids  # 128 bits
    bits = [int.from_bytes(value, "big") for value in raw]
    # Consecutive ids share no structure: about half of their 128 bits differ (a counter or a
    # timestamp would differ in a few low bits), and they are not ordered.
    for first, second in itertools.pairwise(bits):
        assert 32 <= (first ^ second).bit_count() <= 96, ids
    assert bits != sorted(bits)
    ones = sum(value.bit_count() for value in bits) / (128 * len(bits))
    assert 0.4 < ones < 0.6, ones


def test_keys_appear_in_no_log_and_no_file(keyed: ServiceProcess, keys: Keys,
                                           alice_job: dict[str, Any]) -> None:
    # Calls with every key, good and bad, have been made by the tests above; make sure of it.
    for key in (keys.alice, keys.bob, keys.mallory):
        httpx.get(f"{keyed.base_url}/v1/diagnoses", timeout=10,
                  headers={"Authorization": f"Bearer {key}"})
    log = keyed.log()
    assert "GET /v1/diagnoses" in log  # the access log is on: requests are logged, keys not
    assert keyed.data_dir is not None
    files = [path for path in keyed.data_dir.rglob("*") if path.is_file()]
    assert any(path.name == "graddoctor.db" for path in files)
    for key in (keys.alice, keys.bob, keys.mallory):
        assert key not in log
        for path in files:
            assert key.encode() not in path.read_bytes(), f"{key[:6]}... found in {path}"


def test_report_comparison_only_between_jobs_of_the_same_key(keyed: ServiceProcess, keys: Keys,
                                                             alice_job: dict[str, Any]) -> None:
    """``/report?compare=OTHER`` shows the change from OTHER to this job; a job of another key
    on either side is a 404, like any job of another key."""
    with _client(keyed, keys.alice) as alice, _client(keyed, keys.bob) as bob:
        wider = alice.post("/v1/diagnoses", json={"spec": spec_mlp(width=8), "config": SMALL},
                           params={"wait": 60}).json()
        bobs = bob.post("/v1/diagnoses", json={"spec": spec_mlp(width=6), "config": SMALL},
                        params={"wait": 60, "reuse": "false"}).json()
        assert wider["status"] == bobs["status"] == "succeeded", (dump(wider), dump(bobs))
        page = alice.get(f"/v1/diagnoses/{wider['id']}/report",
                         params={"compare": alice_job["id"]})
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "Comparison:" in page.text
        assert "Gradient health" in page.text
        assert f"/v1/diagnoses/{alice_job['id']}/report" in page.text  # links to both reports
        for job, other, client in ((wider["id"], bobs["id"], alice),
                                   (bobs["id"], alice_job["id"], bob)):
            answer = client.get(f"/v1/diagnoses/{job}/report", params={"compare": other})
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"] == "not_found"
