"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from service.errors import ServiceError
from service.metrics import CONTENT_TYPE, render_metrics
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (says nothing about the store or the queue)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health,
            responses={503: {"model": Health, "description": "Store or queue unreachable."}})
def readyz(request: Request) -> JSONResponse:
    """Ready to accept jobs: the job store and the queue are reachable."""
    checks: dict[str, str] = {}
    for name, check in (("store", request.app.state.jobs.store.ping),
                        ("queue", request.app.state.jobs.runner.check)):
        try:
            check()
            checks[name] = "ok"
        except ServiceError as exc:  # our own words: they name what is down, no secrets
            checks[name] = f"unavailable: {exc.detail}"
        except Exception as exc:  # any failure means "not ready"; the reason goes in the body
            checks[name] = f"unavailable: {type(exc).__name__}"
    ok = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics: jobs by status, job duration histogram, queue depth."""
    jobs = request.app.state.jobs
    return PlainTextResponse(render_metrics(jobs.store, jobs.runner), media_type=CONTENT_TYPE)
