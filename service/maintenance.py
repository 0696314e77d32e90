"""Housekeeping the API runs at startup and then periodically.

- Embedded mode, at startup: a job left ``running`` by a stopped service is marked failed (its
  worker died with the service); ``queued`` jobs are handed to the new pool.
- Both modes, periodically: finished jobs past the retention time are deleted with their files;
  staging folders of interrupted uploads are removed; in distributed mode a job still
  ``running`` long after every limit and redelivery could have ended it is marked failed, so no
  job stays ``running`` forever even if every worker is gone, and a job still ``queued`` whose
  message the broker no longer holds (a broker restarted without persistence, an API that died
  between saving a job and sending it) is sent again, so no job stays ``queued`` forever.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from service.blobs import BlobStore
from service.jobs import Runner
from service.schemas import JobStatus
from service.settings import Settings
from service.store import Failure, Store, stale_cutoff, utcnow

log = logging.getLogger("graddoctor.maintenance")

STAGING_MAX_AGE_S = 3600.0
# A worker takes a message off the queue a moment before the broker lists it as taken; a job
# missing from both listings is looked for again after this pause before it is called lost.
RECHECK_S = 1.0


def recover_interrupted(store: Store, runner: Runner) -> None:
    """Embedded startup: fail jobs whose worker died with the service, requeue queued ones."""
    for job_id in store.ids_with_status(JobStatus.RUNNING):
        store.fail(job_id, Failure(
            "worker_lost", "the service stopped while this job was running; submit it again"))
        log.warning("job %s was running when the service stopped: marked failed", job_id)
    for job_id in store.ids_with_status(JobStatus.QUEUED):
        runner.enqueue(job_id)


def stale_after_s(settings: Settings) -> float:
    """How long a job may stay ``running`` before it is presumed abandoned (distributed mode).

    Longer than a hard time limit plus one broker redelivery (which restarts the clock).
    """
    return 2 * settings.job_time_limit_s + 300.0


def requeue_lost(store: Store, runner: Runner, older_than_s: float) -> list[str]:
    """Distributed mode: send again the jobs queued for ``older_than_s`` that the broker lost.

    A job counts as lost when its message is neither waiting in the queue nor held by a worker,
    twice in a row, and its record is still ``queued``. A message found later after all is
    harmless: the first delivery claims the job and any other finds it taken and skips it.
    """
    candidates = store.queued_before(stale_cutoff(older_than_s))
    if not candidates:
        return []
    missing: set[str] = set(candidates)
    for round_ in range(2):
        if round_:
            time.sleep(RECHECK_S)
        pending = runner.pending_ids()
        if pending is None:
            return []  # the broker cannot be read: nothing to conclude
        missing -= pending
        if not missing:
            return []
    lost = [job_id for job_id in candidates if job_id in missing
            and (record := store.get(job_id)) is not None and record.status == JobStatus.QUEUED]
    for job_id in lost:
        runner.enqueue(job_id)
        log.warning("job %s was queued but the broker had lost its message: sent again", job_id)
    return lost


def sweep(store: Store, blobs: BlobStore, settings: Settings,
          runner: Runner | None = None) -> None:
    """One round of housekeeping (``runner``: where lost queued jobs are sent again)."""
    if settings.retention_hours > 0:
        cutoff = utcnow() - timedelta(hours=settings.retention_hours)
        for job_id in store.finished_before(cutoff):
            store.delete(job_id)
            blobs.delete(job_id)
    if settings.distributed:
        limit = stale_after_s(settings)
        for job_id in store.running_since(stale_cutoff(limit)):
            store.fail(job_id, Failure(
                "worker_lost", f"no worker finished this job within {limit:g} s; its worker "
                "was lost", {"limit": "stale_after_s", "limit_value": limit}))
        if runner is not None:
            requeue_lost(store, runner, settings.sweep_interval_s)
    blobs.sweep_staging(STAGING_MAX_AGE_S)
