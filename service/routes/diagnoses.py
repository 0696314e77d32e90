"""/v1/diagnoses: submit, read, list and cancel diagnosis jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.deps import Jobs, Owner
from service.routes._views import API_PREFIX, error_responses, job_path, job_read, job_summary
from service.schemas import EXAMPLE_SPEC, JobCreate, JobList, JobRead, JobStatus

router = APIRouter(prefix=API_PREFIX, tags=["diagnoses"])

_CREATE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "model": {"type": "string", "format": "binary",
                              "description": "The ONNX model file, or a .zip/.tar/.tar.gz "
                              "archive (by its filename) holding exactly one .onnx and its "
                              "external data files."},
                    "data": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "The model's external data files (what "
                             "torch.onnx.export(dynamo=True) writes as model.onnx.data), one part "
                             "each, the filename being the location its tensors name. Relative "
                             "names only: '..', absolute paths, backslashes are refused (422)."},
                    "inputs": {"type": "string", "format": "binary",
                               "description": "Optional sample inputs: an .npz with one array "
                               "per model input, named after it."},
                    "config": {"type": "string", "description": "Optional DiagnosisConfig as a "
                               "JSON object.", "example": '{"samples": 1, "batch_size": 4}'},
                },
            },
        },
        "application/json": {
            "schema": JobCreate.model_json_schema(),
            "examples": {
                "sigmoid_mlp": {"summary": "A small sigmoid MLP spec",
                                "value": {"spec": EXAMPLE_SPEC, "config": {"samples": 1}}},
            },
        },
    },
}

# The store's integer range (SQLite and PostgreSQL BIGINT): a larger OFFSET cannot be bound.
MAX_OFFSET = 2**63 - 1
WaitSeconds = Annotated[float, Query(ge=0, le=60, description="Hold the request up to this many "
                                     "seconds for the job to finish (then 200, else 202).")]


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead,
    openapi_extra={"requestBody": _CREATE_BODY},
    responses={200: {"model": JobRead, "description": "The job finished within ?wait."},
               **error_responses(400, 401, 408, 413, 415, 422, 503, 507)},
)
async def create_diagnosis(request: Request, response: Response, jobs: Jobs, owner: Owner,
                           wait: WaitSeconds = 0, reuse: bool = True) -> JobRead:
    """Submit an ONNX model (multipart) or a JSON architecture spec for diagnosis."""
    record = await jobs.submit(request, owner, reuse=reuse)
    if wait > 0 and not JobStatus(record.status).finished:
        record = await jobs.wait(record.id, owner, wait)
    response.headers["Location"] = job_path(record.id)
    if JobStatus(record.status).finished:
        response.status_code = status.HTTP_200_OK
        if record.result is None and record.status == JobStatus.SUCCEEDED:
            record = await run_in_threadpool(jobs.get, record.id, owner)
    return job_read(record)


@router.get("", response_model=JobList, responses=error_responses(401, 422, 503))
def list_diagnoses(jobs: Jobs, owner: Owner,
                   limit: Annotated[int, Query(ge=1, le=100)] = 20,
                   offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> JobList:
    """List the caller's diagnoses, newest first (without their reports)."""
    records, total = jobs.page(owner, limit, offset)
    after = offset + len(records)
    return JobList(items=[job_summary(r) for r in records], total=total, limit=limit,
                   offset=offset,
                   next=f"{API_PREFIX}?limit={limit}&offset={after}" if after < total else None)


@router.get("/{job_id}", response_model=JobRead,
            responses=error_responses(401, 404, 422, 503))
async def get_diagnosis(job_id: str, jobs: Jobs, owner: Owner,
                        wait: WaitSeconds = 0) -> JobRead:
    """Read a diagnosis: its status, timing, error or report. With ``?wait`` the request is held
    until the job finishes (or the wait is over), so a client waiting for a verdict needs one
    request, not a polling loop, and hears of it as soon as it is written."""
    if wait > 0:
        return job_read(await jobs.wait(job_id, owner, wait))
    return job_read(await run_in_threadpool(jobs.get, job_id, owner))


@router.delete(
    "/{job_id}", response_model=JobRead,
    responses={204: {"description": "The finished job and its files were deleted."},
               200: {"description": "The queued or running job was cancelled."},
               **error_responses(401, 404, 422, 503)},
)
def delete_diagnosis(job_id: str, jobs: Jobs, owner: Owner) -> Any:
    """Cancel a queued or running diagnosis, or delete a finished one and its files."""
    record = jobs.cancel_or_delete(job_id, owner)
    if record is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return job_read(record)
