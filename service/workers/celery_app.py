"""Celery for the distributed mode: the app's configuration and the API's side (CeleryRunner).

The API only sends job ids by task name; it never imports the task module, so it never loads
the engine. Delivery guarantees: late acks and ``reject_on_worker_lost`` put a job whose worker
process died back on the queue for another worker; the store's attempt count ends a job that
kills its worker every time; hard time limits and a memory cap per child bound each job.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from service.errors import ServiceUnavailableError
from service.settings import Settings

log = logging.getLogger("graddoctor.queue")

TASK_NAME = "graddoctor.run_job"
HARD_LIMIT_GRACE_S = 30.0  # past the job's own alarm before Celery kills the child
VISIBILITY_MARGIN_S = 120.0  # default visibility timeout past the hard limit


def visibility_timeout_s(settings: Settings) -> float:
    """Seconds before an unacknowledged job goes to another worker (its worker vanished)."""
    return (settings.broker_visibility_timeout_s
            or settings.job_time_limit_s + HARD_LIMIT_GRACE_S + VISIBILITY_MARGIN_S)


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from the service settings."""
    app = Celery("graddoctor", broker=settings.broker_url)
    hard_limit = settings.job_time_limit_s + HARD_LIMIT_GRACE_S
    visibility = visibility_timeout_s(settings)
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
        # An unacked message returns to the queue after the visibility timeout (longer than any
        # job may run). Workers look for such messages every interval; kombu's default scans
        # only every 10th interval (100 s), which would add that much to every recovery.
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1.0, min(10.0, visibility / 8)),
            "unacked_restore_throttle": 1,
        },
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
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                self._client(conn).ping()
        except Exception as exc:  # whatever the transport raises, the broker is not usable
            raise ServiceUnavailableError(
                f"the broker ({str(self.settings.broker_url).split(':', 1)[0]}) is unreachable "
                f"({type(exc).__name__})") from None

    def pending_ids(self) -> set[str] | None:
        """Ids of the jobs whose message the broker holds: waiting in our queue, or taken by a
        worker and not yet acknowledged. None when the broker cannot be read.

        Redis transport only (the one the service supports): the queue is a list per priority
        and taken messages sit in the ``unacked`` hash until acknowledged.
        """
        try:
            with self.app.connection_for_read() as conn:
                channel = conn.default_channel
                client = channel.client
                raw = [message for pri in channel.priority_steps
                       for message in client.lrange(
                           channel._q_for_pri(self.settings.queue, pri), 0, -1)]
                payloads = [json.loads(message) for message in raw]
                payloads += [json.loads(held)[0] for held in client.hvals(channel.unacked_key)]
        except Exception:  # unreachable, or not the Redis transport: nothing can be concluded
            log.warning("could not read the messages held by the broker", exc_info=True)
            return None
        return {_task_id(payload) for payload in payloads} - {""}

    def queue_depth(self) -> int | None:
        try:
            with self.app.connection_for_read() as conn:
                return int(self._client(conn).llen(self.settings.queue))
        except Exception:  # metrics must render even when the broker is down
            return None

    @staticmethod
    def _client(conn: Any) -> Any:
        return conn.default_channel.client


def _task_id(payload: Any) -> str:
    """The task id (our job id) of a kombu message as the Redis transport stores it."""
    if not isinstance(payload, dict):
        return ""
    headers = payload.get("headers") or {}
    properties = payload.get("properties") or {}
    return str(headers.get("id") or properties.get("correlation_id") or "")
