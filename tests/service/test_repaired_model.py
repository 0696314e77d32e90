"""GET /v1/diagnoses/{id}/remedies/{remedy_id}/model against a real server: the repaired ONNX
downloads, and re-diagnosing it gives the status its remedy was verified to reach."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics import diagnose
from tests.onnx_export import export_legacy

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def sigmoid_job(server):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(10):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = export_legacy(nn.Sequential(*layers, nn.Linear(16, 2)).eval(),
                          (torch.randn(4, 16),), input_names=["x"])
    with server.client() as client:
        answer = client.post("/v1/diagnoses", params={"wait": 60},
                             files={"model": ("deep sigmoid.onnx", model)},
                             data={"config": '{"samples": 1}'})
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "succeeded", job
    return job


def test_repaired_model_downloads_and_rediagnoses_as_verified(server, sigmoid_job):
    remedy = next(r for r in sigmoid_job["result"]["remedies"] if r["id"] == "reinitialize")
    assert remedy["repairable"]
    with server.client() as client:
        answer = client.get(f"/v1/diagnoses/{sigmoid_job['id']}/remedies/reinitialize/model")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    assert ".reinitialize.onnx" in answer.headers["content-disposition"]
    again = diagnose(answer.content, config={"samples": 1, "verify_remedies": False})
    assert again.verdict.status == remedy["verified"]["status_after"] == "healthy"


@pytest.mark.parametrize(
    ("remedy_id", "status", "words"),
    [("replace-activation", 409, "architecture"), ("no-such-remedy", 404, "no remedy"),
     ("..%2F..%2Fetc", 404, "")],  # never reaches the route, let alone the file system
    ids=["architecture-remedy", "unknown-remedy", "path-traversal"],
)
def test_repaired_model_errors_are_clear(server, sigmoid_job, remedy_id, status, words):
    with server.client() as client:
        answer = client.get(f"/v1/diagnoses/{sigmoid_job['id']}/remedies/{remedy_id}/model")
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
