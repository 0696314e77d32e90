"""Celery for the distributed mode: the app's configuration and the API's side (CeleryRunner).

The API only sends job ids by task name; it never imports the task module, so it never loads
the engine. Delivery guarantees: late acks and ``reject_on_worker_lost`` put a job whose worker
process died back on the queue for another worker; the store's attempt count ends a job that
kills its worker every time; hard time limits and a memory cap per child bound each job.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from service.errors import ServiceUnavailableError
from service.settings import Settings

TASK_NAME = "graddoctor.run_job"
HARD_LIMIT_GRACE_S = 30.0  # past the job's own alarm before Celery kills the child


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from the service settings."""
    app = Celery("graddoctor", broker=settings.broker_url)
    hard_limit = settings.job_time_limit_s + HARD_LIMIT_GRACE_S
    app.conf.update(
        task_default_queue=settings.queue,
        task_serializer="json", accept_content=["json"],
        task_ignore_result=True, result_backend=None,
        task_acks_late=True, task_reject_on_worker_lost=True,
        task_time_limit=hard_limit,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,  # a busy worker leaves queued jobs to idle ones
        # Children warm up (engine imports, a tiny diagnosis) before saying they are up.
        worker_proc_alive_timeout=300.0,
        worker_concurrency=settings.workers,
        # KiB of resident memory; a child above it is replaced after its job.
        worker_max_memory_per_child=settings.job_memory_limit_mb * 1024,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # An unacked message returns to the queue after this; longer than any job may run.
        broker_transport_options={"visibility_timeout": int(hard_limit + 120)},
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                   "interval_step": 0.5, "interval_max": 1},
    )
    return app


class CeleryRunner:
    """Hands job ids to Celery workers through the broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_celery(settings)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.app.close()

    def enqueue(self, job_id: str) -> None:
        try:
            self.app.send_task(TASK_NAME, args=[job_id], task_id=job_id,
                               queue=self.settings.queue)
        except (KombuError, OSError) as exc:
            raise ServiceUnavailableError(
                f"the job queue is unreachable ({type(exc).__name__}); try again shortly"
            ) from None

    def cancel(self, job_id: str) -> None:
        try:
            self.app.control.revoke(job_id, terminate=True, signal="SIGKILL")
        except (KombuError, OSError):
            pass  # the job is already cancelled in the store; its worker will skip it

    def check(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            self._client(conn).ping()

    def queue_depth(self) -> int | None:
        try:
            with self.app.connection_for_read() as conn:
                return int(self._client(conn).llen(self.settings.queue))
        except Exception:  # metrics must render even when the broker is down
            return None

    @staticmethod
    def _client(conn: Any) -> Any:
        return conn.default_channel.client
