"""JobService: validate a submission, persist it, then hand its id to a runner.

Routes call this and nothing else. It never imports torch: the diagnosis itself runs in a worker
process (``service.workers.execute``). Store calls are blocking, so async callers run them in a
thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from typing import Any, Protocol, runtime_checkable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from diagnostics.config import resolve_config
from service.blobs import BlobStore, new_id
from service.errors import NotFoundError, ServiceUnavailableError
from service.schemas import JobStatus
from service.settings import Settings
from service.store import JobRecord, Store, utcnow
from service.uploads import Submission, read_submission

log = logging.getLogger("graddoctor.jobs")

# How often a wait that the worker pool will wake (``WatchingRunner``) still re-reads the store.
_WATCHED_RECHECK_S = 1.0

# Part of every content hash: bump it when a change to the engine makes old results stale.
RESULT_VERSION = "1"


class Runner(Protocol):
    """Where job ids go to be run: the embedded pool or Celery."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def enqueue(self, job_id: str) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    def check(self) -> None: ...
    def queue_depth(self) -> int | None: ...
    def pending_ids(self) -> set[str] | None: ...


@runtime_checkable
class WatchingRunner(Runner, Protocol):
    """A runner that can say when a job ends (the embedded pool), so ``?wait`` needn't poll."""

    def watch(self, job_id: str) -> threading.Event: ...
    def unwatch(self, job_id: str) -> None: ...


class JobService:
    """The job life cycle as the API sees it."""

    def __init__(self, settings: Settings, store: Store, blobs: BlobStore, runner: Runner) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.runner = runner

    async def submit(self, request: Request, owner: str, *, reuse: bool = True) -> JobRecord:
        """Read, validate and persist a submission, then enqueue it (or reuse a result)."""
        staging = await run_in_threadpool(self.blobs.new_staging)
        try:
            submission = await read_submission(
                request, staging, limit=self.settings.max_upload_bytes,
                timeout_s=self.settings.read_timeout_s, limits=self.settings.limits)
            config = resolve_config(submission.config)  # InvalidConfigError -> 422
            content_hash = _content_hash(submission, config.model_dump(mode="json"))
            if reuse:
                earlier = await run_in_threadpool(self.store.find_reusable, owner, content_hash)
                if earlier is not None:
                    return await run_in_threadpool(self._reuse, earlier, submission, owner)
            record = _new_record(submission, owner, content_hash)
            await run_in_threadpool(self._persist_and_enqueue, record, staging)
            return record
        finally:
            await run_in_threadpool(self.blobs.discard, staging)

    def _persist_and_enqueue(self, record: JobRecord, staging: Any) -> None:
        self.blobs.commit(staging, record.id)
        try:
            self.store.add(record)
        except Exception:  # store down or disk full: no job folder without its record
            self.blobs.delete(record.id)
            raise
        try:
            self.runner.enqueue(record.id)
        except ServiceUnavailableError:
            self.store.delete(record.id)
            self.blobs.delete(record.id)
            raise

    def _reuse(self, earlier: JobRecord, submission: Submission, owner: str) -> JobRecord:
        record = _new_record(submission, owner, earlier.content_hash)
        now = utcnow()
        record.status, record.reused_from = JobStatus.SUCCEEDED, earlier.id
        record.result, record.verdict = earlier.result, earlier.verdict
        record.started_at = record.finished_at = now  # no run: duration_s stays empty
        self.blobs.copy_report(earlier.id, record.id)
        self.store.add(record)
        return record

    def get(self, job_id: str, owner: str, *, with_result: bool = True) -> JobRecord:
        """The caller's job; another owner's job is indistinguishable from a missing one."""
        record = self.store.get(job_id, with_result=with_result)
        if record is None or record.owner != owner:
            raise NotFoundError(f"no diagnosis with id {job_id[:64]!r}", id=job_id[:64])
        return record

    def page(self, owner: str, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        return self.store.page(owner, limit, offset)

    def cancel_or_delete(self, job_id: str, owner: str) -> JobRecord | None:
        """Cancel an active job (returned, now cancelled) or delete a finished one (None)."""
        record = self.get(job_id, owner, with_result=False)
        if record.status in (JobStatus.QUEUED, JobStatus.RUNNING) and self.store.cancel(job_id):
            self.runner.cancel(job_id)
            return self.get(job_id, owner)
        self.store.delete(job_id)
        self.blobs.delete(job_id)
        return None

    async def wait(self, job_id: str, owner: str, timeout_s: float) -> JobRecord:
        """Poll until the job has finished or ``timeout_s`` has passed; return it either way."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        watcher = self.runner if isinstance(self.runner, WatchingRunner) else None
        finished = watcher.watch(job_id) if watcher is not None else None
        try:
            while True:
                record = await run_in_threadpool(self.get, job_id, owner, with_result=False)
                remaining = deadline - time.monotonic()
                if JobStatus(record.status).finished or remaining <= 0:
                    return await run_in_threadpool(self.get, job_id, owner)
                if finished is not None:
                    # The event wakes this as soon as the job ends; the store is read again
                    # only now and then, for what the event does not see (a queued job
                    # cancelled). Re-reading it every 50-500 ms cost the API process ~5 ms of
                    # CPU per small job, taken from the workers.
                    await run_in_threadpool(finished.wait, min(_WATCHED_RECHECK_S, remaining))
                else:
                    await asyncio.sleep(min(delay, remaining))
                    delay = min(delay * 1.5, 0.5)
        finally:
            if watcher is not None:
                watcher.unwatch(job_id)


def _content_hash(submission: Submission, config: dict[str, Any]) -> str:
    parts = [RESULT_VERSION, submission.kind, submission.model_sha256,
             submission.inputs_sha256 or "-", json.dumps(config, sort_keys=True)]
    if submission.data_sha256:  # external data: the same .onnx with other weights differs
        parts.append(submission.data_sha256)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _new_record(submission: Submission, owner: str, content_hash: str) -> JobRecord:
    return JobRecord(
        id=new_id(), owner=owner, status=JobStatus.QUEUED, kind=submission.kind,
        filename=submission.filename, has_inputs=submission.inputs_sha256 is not None,
        config=submission.config, content_hash=content_hash, created_at=utcnow(), attempts=0,
        result=None,
    )
