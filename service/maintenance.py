"""Housekeeping the API runs at startup and then periodically.

- Embedded mode, at startup: a job left ``running`` by a stopped service is marked failed (its
  worker died with the service); ``queued`` jobs are handed to the new pool.
- Both modes, periodically: finished jobs past the retention time are deleted with their files;
  staging folders of interrupted uploads are removed; in distributed mode a job still
  ``running`` long after every limit and redelivery could have ended it is marked failed, so no
  job stays ``running`` forever even if every worker is gone.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from service.blobs import BlobStore
from service.jobs import Runner
from service.settings import Settings
from service.store import Failure, Store, stale_cutoff, utcnow

log = logging.getLogger("graddoctor.maintenance")

STAGING_MAX_AGE_S = 3600.0


def recover_interrupted(store: Store, runner: Runner) -> None:
    """Embedded startup: fail jobs whose worker died with the service, requeue queued ones."""
    for job_id in store.ids_with_status("running"):
        store.fail(job_id, Failure(
            "worker_lost", "the service stopped while this job was running; submit it again"))
        log.warning("job %s was running when the service stopped: marked failed", job_id)
    for job_id in store.ids_with_status("queued"):
        runner.enqueue(job_id)


def stale_after_s(settings: Settings) -> float:
    """How long a job may stay ``running`` before it is presumed abandoned (distributed mode).

    Longer than a hard time limit plus one broker redelivery (which restarts the clock).
    """
    return 2 * settings.job_time_limit_s + 300.0


def sweep(store: Store, blobs: BlobStore, settings: Settings) -> None:
    """One round of housekeeping."""
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
    blobs.sweep_staging(STAGING_MAX_AGE_S)
