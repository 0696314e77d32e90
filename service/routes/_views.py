"""Job records -> response bodies, and the error responses each route documents."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorBody, JobError, JobLinks, JobRead, JobSummary
from service.store import JobRecord

API_PREFIX = "/v1/diagnoses"


def job_path(job_id: str) -> str:
    return f"{API_PREFIX}/{job_id}"


def _fields(record: JobRecord) -> dict[str, Any]:
    error = None
    if record.error_type:
        error = JobError(type=record.error_type, detail=record.error_detail or "",
                         context=record.error_context)
    return {
        "id": record.id, "status": record.status, "kind": record.kind,
        "filename": record.filename, "created_at": record.created_at,
        "started_at": record.started_at, "finished_at": record.finished_at,
        "progress": record.progress, "attempts": record.attempts,
        "reused_from": record.reused_from, "verdict": record.verdict, "error": error,
        "links": JobLinks(self=job_path(record.id), report=f"{job_path(record.id)}/report"),
    }


def job_summary(record: JobRecord) -> JobSummary:
    return JobSummary(**_fields(record))


def job_read(record: JobRecord) -> JobRead:
    # The report column is deferred: use it only if it was loaded.
    return JobRead(**_fields(record), result=record.__dict__.get("result"))


def error_responses(*statuses: int, page: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer, all JSON ``ErrorBody``.

    Routes with parameters list 422, so that FastAPI does not add its own entry with the
    ``HTTPValidationError`` shape, which our handler never sends. ``page``: the route answers
    with a non-JSON page (``response_class``), under whose media type FastAPI would file a
    ``model``; its errors are declared as JSON explicitly.
    """
    text = {
        400: "Malformed request (bad JSON, bad form field).",
        401: "API keys are configured and no valid key was sent.",
        404: "No such diagnosis for this API key.",
        408: "The client stopped sending the upload.",
        409: "The diagnosis has not succeeded (yet).",
        413: "Request body over GRADDOCTOR_MAX_UPLOAD_BYTES (checked while streaming), or a "
             "JSON body larger than a spec may be.",
        415: "Neither multipart/form-data nor application/json.",
        422: "Invalid field, config or query parameter; the detail names it.",
        503: "The job store or the queue is unreachable.",
        507: "No disk space left for the upload.",
    }
    if page:
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        return {status: {"description": text[status], "content": content} for status in statuses}
    return {status: {"model": ErrorBody, "description": text[status]} for status in statuses}
