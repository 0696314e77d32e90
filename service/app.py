"""create_app(): the FastAPI application, wired to a store, a blob folder and a runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from service import maintenance
from service.blobs import BlobStore
from service.errors import install_error_handlers
from service.jobs import JobService, Runner
from service.routes import diagnoses, guide, health, reports
from service.settings import Settings, get_settings
from service.store import Store

log = logging.getLogger("graddoctor.api")

DESCRIPTION = """
Gradient diagnostics as a service. Submit an ONNX model (multipart/form-data, field `model`) or a
JSON architecture spec (`application/json`, `{"spec": ..., "config": ...}`) to
`POST /v1/diagnoses`; the job runs on a worker and its result is the engine's report:
a verdict (`healthy`, `vanishing`, `exploding`), per-layer gradient statistics and remedies.
`GET /v1/diagnoses/{id}/report` shows it as an HTML page.

Every error is `{"error": <type>, "detail": <message>}`. When the service has API keys, send
`Authorization: Bearer <key>` (the Authorize button) on every `/v1` call.
"""


def make_runner(settings: Settings) -> Runner:
    """The embedded process pool, or Celery when a broker is configured."""
    if settings.distributed:
        from service.workers.celery_app import CeleryRunner

        return CeleryRunner(settings)
    from service.workers.local import LocalRunner

    return LocalRunner(settings)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create tables and folders, start the runner, sweep periodically; stop on shutdown."""
    jobs: JobService = app.state.jobs
    await run_in_threadpool(jobs.blobs.create_dirs)
    await run_in_threadpool(jobs.store.create_schema)
    await run_in_threadpool(jobs.runner.start)
    if not jobs.settings.distributed:
        await run_in_threadpool(maintenance.recover_interrupted, jobs.store, jobs.runner)
    sweeper = asyncio.create_task(_sweep_forever(jobs))
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await run_in_threadpool(jobs.runner.stop)
        jobs.store.dispose()


async def _sweep_forever(jobs: JobService) -> None:
    while True:
        try:
            await run_in_threadpool(maintenance.sweep, jobs.store, jobs.blobs, jobs.settings,
                                    jobs.runner)
        except Exception:  # a failed sweep (store or broker briefly down) is retried next round
            log.exception("housekeeping failed")
        await asyncio.sleep(jobs.settings.sweep_interval_s)


def create_app(settings: Settings | None = None, *, runner: Runner | None = None) -> FastAPI:
    """The application. Tests pass their own settings and, for pure-HTTP tests, a runner."""
    settings = settings or get_settings()
    store = Store(settings.store_url)
    jobs = JobService(settings, store, BlobStore(settings.data_dir),
                      runner or make_runner(settings))
    app = FastAPIOffline(
        title="GradDoctor", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
        favicon_url=None,
    )
    app.state.settings = settings
    app.state.jobs = jobs
    install_error_handlers(app)
    for module in (diagnoses, reports, health, guide):
        app.include_router(module.router)
    return app
