"""The Celery task (a job id in, one call to ``execute_job``) and the worker process hooks.

Imported by ``graddoctor worker`` only. The main worker process stays light; each pool child
loads the engine once when it starts (``worker_process_init``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_process_init

from service.blobs import BlobStore
from service.settings import get_settings
from service.store import Store
from service.workers.celery_app import TASK_NAME, create_celery
from service.workers.execute import execute_job, time_failure, warm_up

log = logging.getLogger("graddoctor.worker")

settings = get_settings()
app = create_celery(settings)
_stores: dict[int, Store] = {}


def _store() -> Store:
    # One engine per process: a connection pool must not be shared across fork.
    pid = os.getpid()
    if pid not in _stores:
        _stores[pid] = Store(settings.store_url)
    return _stores[pid]


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Task, job_id: str) -> None:
    """Run one diagnosis job."""
    # Set by the broker on a message it put back because its worker died (or vanished).
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    execute_job(job_id, _store(), BlobStore(settings.data_dir), settings,
                redelivered=redelivered)


@worker_process_init.connect
def _warm_child(**_: Any) -> None:
    warm_up(settings)


@task_failure.connect
def _hard_time_limit(task_id: str | None = None, exception: BaseException | None = None,
                     **_: Any) -> None:
    # Sent in the main worker process when Celery killed a child at the hard time limit: the
    # child could not record anything, so record it here.
    if task_id and isinstance(exception, TimeLimitExceeded):
        _store().fail(task_id, time_failure(settings))
