"""/v1/diagnoses/{id}/report: the self-contained HTML report page."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.deps import Jobs, Owner
from service.errors import ConflictError
from service.report_page import CSP, fallback_page
from service.routes._views import API_PREFIX, error_responses
from service.schemas import JobStatus

router = APIRouter(prefix=API_PREFIX, tags=["reports"])


@router.get(
    "/{job_id}/report", response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The report page."},
               **error_responses(401, 404, 409)},
)
def get_report(job_id: str, jobs: Jobs, owner: Owner) -> Response:
    """The diagnosis as an HTML page: verdict, gradient-flow plot, layer table, remedies."""
    record = jobs.get(job_id, owner, with_result=False)
    if record.status != JobStatus.SUCCEEDED:
        raise ConflictError(f"diagnosis {job_id} is {record.status}; its report exists once it "
                            "has succeeded", status=record.status)
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
    path = jobs.blobs.report_path(job_id)
    if path.is_file():
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)
    return HTMLResponse(fallback_page(jobs.get(job_id, owner).result or {}), headers=headers)
