"""/v1/diagnoses/{id}/report: the self-contained HTML report page."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.deps import Jobs, Owner
from service.errors import ConflictError, NotFoundError
from service.report_page import CSP, comparison_page, fallback_page
from service.routes._views import API_PREFIX, error_responses
from service.schemas import JobStatus

router = APIRouter(prefix=API_PREFIX, tags=["reports"])
REPORT_WAIT_S = 30.0  # longest wait for a page being rendered before the plain fallback page


@router.get(
    "/{job_id}/report", response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The report page."},
               **error_responses(401, 404, 409, 422, 503, page=True)},
)
def get_report(
    job_id: str, jobs: Jobs, owner: Owner,
    compare: Annotated[str | None, Query(
        max_length=200, description="Another diagnosis of the same API key: the page shows "
        "how the gradients changed from it (the baseline) to this one.")] = None,
) -> Response:
    """The diagnosis as an HTML page: verdict, gradient-flow plot, layer table, remedies; with
    ``compare``, the per-layer change from another diagnosis instead."""
    record = jobs.get(job_id, owner, with_result=False)
    if record.status != JobStatus.SUCCEEDED:
        raise ConflictError(f"diagnosis {job_id} is {record.status}; its report exists once it "
                            "has succeeded", status=record.status)
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
    if compare is not None:
        return HTMLResponse(comparison_page(jobs, owner, baseline=compare, job_id=job_id),
                            headers=headers)
    path = jobs.blobs.report_path(job_id)
    deadline = time.monotonic() + REPORT_WAIT_S
    while jobs.blobs.report_pending(job_id) and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker stored the result and is drawing the page right now
    if path.is_file():
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)
    return HTMLResponse(fallback_page(jobs.get(job_id, owner).result or {}), headers=headers)


@router.get(
    "/{job_id}/remedies/{remedy_id}/model",
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "The ONNX model with the remedy's weights."},
               **error_responses(401, 404, 409, 422, 503)},
)
def get_repaired_model(job_id: str, remedy_id: str, jobs: Jobs, owner: Owner) -> Response:
    """The repaired ONNX model for a remedy that changes only initializer values."""
    record = jobs.get(job_id, owner)
    if record.status != JobStatus.SUCCEEDED:
        raise ConflictError(f"diagnosis {job_id} is {record.status}; repaired models exist once "
                            "it has succeeded", status=record.status)
    remedies = {r["id"]: r for r in (record.result or {}).get("remedies", [])}
    if remedy_id not in remedies:
        raise NotFoundError(f"diagnosis {job_id} has no remedy {remedy_id!r} (remedies: "
                            f"{', '.join(remedies) or 'none'})")
    if not remedies[remedy_id].get("repairable"):
        raise ConflictError(f"remedy {remedy_id!r} changes the architecture or the training "
                            "setup, not only initializer values: apply it in your model code")
    path = jobs.blobs.repaired_model_path(job_id, remedy_id)
    if not path.is_file():
        raise ConflictError(f"no repaired model was written for remedy {remedy_id!r}: repaired "
                            "models are made for ONNX uploads")
    name = (record.result or {}).get("source", {}).get("name") or "model.onnx"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name.removesuffix(".onnx"))[:100] or "model"
    filename = f"{stem}.{remedy_id}.onnx"
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
