"""The one place that calls ``diagnostics.diagnose``: run one job by id, in a worker process.

Both runners (the embedded pool and Celery) call :func:`warm_up` once per worker process and
:func:`execute_job` per job. The engine is imported inside these functions so that the processes
that supervise workers never load torch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.blobs import DATA_DIR, INPUTS_FILE, MODEL_FILE, SPEC_FILE, BlobStore
from service.settings import Settings
from service.store import Claim, Failure, Store
from service.workers.limits import JobTimeLimitError, isolated_cwd, memory_limit, time_limit

log = logging.getLogger("graddoctor.worker")

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def warm_up(settings: Settings) -> None:
    """Load torch, onnx2torch and the engine once, with this worker's share of the cores."""
    started = time.monotonic()
    threads = settings.threads_per_worker
    for name in _THREAD_ENV:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (a forked warm parent)
        pass
    # Start the intra-op thread pool now, outside any job's memory limit: OpenMP aborts the
    # whole process when it cannot create a thread, where a failed allocation is an error.
    torch.ones(1 << 22).mul_(2).sum()
    import onnx2torch  # noqa: F401  (loaded once per process, not per job)

    from diagnostics import warm_up as warm_up_engine

    # One tiny diagnosis loads what the engine imports lazily and warms torch's kernels, so the
    # first real job does not pay for it (about 5 s here).
    try:
        warm_up_engine()
    except Exception:  # a broken engine fails each job clearly; the worker still starts
        log.exception("warm-up diagnosis failed")
    log.info("worker process %d warm in %.1f s (%d torch threads)", os.getpid(),
             time.monotonic() - started, threads)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(job_id: str, store: Store, blobs: BlobStore, settings: Settings, *,
                redelivered: bool = False, on_stored: Callable[[], None] | None = None) -> None:
    """Claim the job, diagnose it under the job limits, store the report or the error.

    The result is stored before the HTML page is rendered (drawing the plot took a third as
    long as diagnosing a ResNet-18): a client waiting on the job gets its answer first, and a
    request for the page meanwhile waits for it (``BlobStore.report_pending``).

    Args:
        redelivered: the broker gave us this job again because the worker that took it died,
            so a ``running`` record is that dead worker's and may be taken over.
        on_stored: called once the result or the error is stored (the embedded pool wakes the
            request waiting on this job).
    """
    claim = store.claim(job_id, worker=worker_name(), max_attempts=settings.job_max_attempts,
                        reclaim=redelivered)
    if claim is None:
        return  # cancelled, deleted, finished, or out of attempts
    folder = blobs.job_dir(job_id)
    outcome = _diagnose(claim, folder, store, settings)
    if isinstance(outcome, Failure):
        store.fail(job_id, outcome, attempt=claim.attempt)
        if on_stored is not None:
            on_stored()
        return
    result, verdict, report, repaired = outcome
    for remedy_id, model in repaired.items():
        blobs.write_repaired_model(job_id, remedy_id, model)
    blobs.mark_report_pending(job_id)
    store.succeed(claim, result, verdict)
    if on_stored is not None:
        on_stored()
    try:
        with time_limit(settings.job_time_limit_s), memory_limit(settings.job_memory_limit_bytes):
            html = _render_html(report)
        if html is not None:
            blobs.write_report(job_id, html)
    except Exception:  # the stored result stands; the API serves its plain fallback page
        log.exception("job %s: rendering the report page failed", job_id)
    finally:
        blobs.clear_report_pending(job_id)


def _diagnose(claim: Claim, folder: Path, store: Store,
              settings: Settings) -> tuple[dict[str, Any], str, Any,
                                           dict[str, bytes]] | Failure:
    from diagnostics import DiagnosticsError, diagnose
    from diagnostics.errors import OutOfMemoryError

    source: Any = (folder / MODEL_FILE if claim.kind == "onnx"
                   else json.loads((folder / SPEC_FILE).read_text(encoding="utf-8")))
    inputs = str(folder / INPUTS_FILE) if claim.has_inputs else None
    # External data (model.onnx.data ...) was uploaded into the job's own data folder; the
    # engine reads locations only inside it. Both worker kinds see the same job folders.
    data_dir = folder / DATA_DIR if claim.kind == "onnx" else None
    if data_dir is not None:
        data_dir.mkdir(exist_ok=True, mode=0o700)
    limits = settings.limits
    try:
        with isolated_cwd(), time_limit(settings.job_time_limit_s), \
                memory_limit(settings.job_memory_limit_bytes):
            report = diagnose(source, inputs=inputs, config=claim.config, limits=limits,
                              progress=lambda stage: store.set_progress(claim, stage),
                              data_dir=data_dir)
            repaired = _repaired_models(report) if claim.kind == "onnx" else {}
            return report.model_dump(mode="json"), str(report.verdict.status), report, repaired
    except JobTimeLimitError:
        return time_failure(settings)
    except OutOfMemoryError:
        return memory_failure(settings)
    except DiagnosticsError as exc:
        if _caused_by_memory(exc):
            return memory_failure(settings)
        return Failure(exc.error_type, exc.detail, dict(exc.context) or None)
    except Exception as exc:
        if _caused_by_memory(exc):
            return memory_failure(settings)
        log.exception("job %s failed unexpectedly", claim.job_id)
        return Failure("internal_error", f"{type(exc).__name__}: {exc}"[:2000])


def _repaired_models(report: Any) -> dict[str, bytes]:
    """The ONNX file for each remedy that only changes initializer values, written now while
    the worker holds the model (the API never loads one). A model too large for one file gets
    none (the remedy's advice stands)."""
    from diagnostics.errors import RemedyNotRepairableError

    models = {}
    for remedy in report.remedies:
        if remedy.repairable:
            try:
                models[remedy.id] = report.repaired_model(remedy.id)
            except RemedyNotRepairableError as exc:
                log.info("no repaired model for %s: %s", remedy.id, exc.detail)
    return models


def _render_html(report: Any) -> str | None:
    try:
        from diagnostics.render.html import render_html
    except ImportError:
        return None
    return render_html(report)


def _caused_by_memory(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        text = str(exc)
        if isinstance(exc, MemoryError) or "can't allocate memory" in text \
                or "not enough memory" in text or "std::bad_alloc" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def time_failure(settings: Settings) -> Failure:
    """The failure of a job that ran over its wall-time limit."""
    limit = settings.job_time_limit_s
    return Failure("job_time_limit", f"the job ran over its time limit of {limit:g} s "
                   "(GRADDOCTOR_JOB_TIME_LIMIT_S)", {"limit": "job_time_limit_s",
                                                     "limit_value": limit})


def memory_failure(settings: Settings) -> Failure:
    """The failure of a job that ran over its memory limit."""
    limit = settings.job_memory_limit_mb
    return Failure("job_memory_limit", f"the job needed more than its memory limit of {limit} MiB "
                   "(GRADDOCTOR_JOB_MEMORY_LIMIT_MB)", {"limit": "job_memory_limit_mb",
                                                        "limit_value": limit})

