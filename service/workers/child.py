"""The body of an embedded worker process: warm up once, then run job ids sent over a pipe."""

from __future__ import annotations

import functools
import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from service.blobs import BlobStore
from service.settings import Settings
from service.store import Failure, Store

log = logging.getLogger("graddoctor.worker")


def resident_bytes() -> int:
    """Resident memory of this process (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def describe_exit(code: int | None) -> str:
    """'killed by SIGKILL', 'exit status 1' ..."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def child_main(conn: Connection, settings_data: dict[str, Any]) -> None:
    """Warm up, say ready, then execute one job id at a time until the pipe closes."""
    from service.workers.execute import execute_job, warm_up

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the API, which stops us
    settings = Settings(**settings_data)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warm_up(settings)
    store, blobs = Store(settings.store_url), BlobStore(settings.data_dir)
    baseline = resident_bytes()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job_id = conn.recv()
        except (EOFError, OSError):
            break
        try:
            execute_job(job_id, store, blobs, settings,
                        on_stored=functools.partial(conn.send, ("stored", job_id)))
        except Exception as exc:  # the store failed under us: record what we can, keep serving
            log.exception("job %s could not be executed", job_id)
            _try_fail(store, job_id, exc)
        # A process that kept much of a big job's memory is replaced rather than reused; it
        # says so with "done", so that its supervisor sends the next job to the replacement.
        retire = resident_bytes() - baseline > settings.job_memory_limit_bytes // 2
        conn.send(("done", job_id, retire))
        if retire:
            break
    store.dispose()


def _try_fail(store: Store, job_id: str, exc: Exception) -> None:
    try:
        store.fail(job_id, Failure("internal_error", f"{type(exc).__name__}: {exc}"[:2000]))
    except Exception:
        log.exception("could not record the failure of job %s", job_id)
