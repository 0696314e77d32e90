"""The embedded runner: a pool of warm worker processes inside ``graddoctor serve``.

One supervisor thread per worker process hands it one job id at a time and watches it. Pending
ids wait in the supervisor's queue, never inside a worker, so a worker that dies (SIGKILL, the
OOM killer, a crash in native code) fails only the job it was running; its supervisor records
why and starts a replacement. (``concurrent.futures.ProcessPoolExecutor`` would instead fail
every pending job with BrokenProcessPool.) A job past its time limit is killed the same way.

Processes come from a forkserver that has imported torch, onnx2torch and the engine once, so a
replacement is warm a moment after it is forked rather than after a fresh torch import.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from service.errors import ServiceUnavailableError
from service.settings import Settings
from service.store import Failure, Store
from service.workers.child import child_main, describe_exit
from service.workers.execute import time_failure

log = logging.getLogger("graddoctor.pool")

GRACE_S = 10.0  # past the job's own alarm, before the supervisor kills its process
READY_TIMEOUT_S = 300.0
POLL_S = 0.5


def _context() -> Any:
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:  # no forkserver on this platform
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(["service.workers.preload"])
    return ctx


class LocalRunner:
    """Runs job ids on ``settings.workers`` warm processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        self._slots: list[_Slot] = []
        self._watchers: dict[str, threading.Event] = {}
        self._watch_lock = threading.Lock()

    def start(self) -> None:
        ctx = _context()
        store = Store(self.settings.store_url)
        self._slots = [_Slot(i, ctx, self.settings, self._queue, self._stopping, store,
                             self._finished) for i in range(self.settings.workers)]
        for slot in self._slots:
            slot.thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for slot in self._slots:
            slot.thread.join(timeout=GRACE_S)

    def enqueue(self, job_id: str) -> None:
        if self._stopping.is_set():
            raise ServiceUnavailableError("the worker pool is shutting down")
        self._queue.put(job_id)

    def watch(self, job_id: str) -> threading.Event:
        """An event set once ``job_id``'s result or error is stored (or its worker is gone).

        Lets a request waiting on the job (``?wait``) answer at once instead of at its next
        poll of the store. Call :meth:`unwatch` when done waiting.
        """
        with self._watch_lock:
            return self._watchers.setdefault(job_id, threading.Event())

    def unwatch(self, job_id: str) -> None:
        with self._watch_lock:
            self._watchers.pop(job_id, None)

    def _finished(self, job_id: str) -> None:
        with self._watch_lock:
            event = self._watchers.get(job_id)
        if event is not None:
            event.set()

    def cancel(self, job_id: str) -> None:
        for slot in self._slots:
            slot.kill_if_running(job_id, "cancelled")

    def check(self) -> None:
        if not self._slots or not all(slot.thread.is_alive() for slot in self._slots):
            raise ServiceUnavailableError("the worker pool is not running")

    def queue_depth(self) -> int | None:
        return self._queue.qsize()

    def pending_ids(self) -> set[str] | None:
        return None  # an in-process queue loses nothing while the service runs


class _Slot:
    """One worker process and the thread that supervises it."""

    def __init__(self, index: int, ctx: Any, settings: Settings, jobs: queue.Queue[str],
                 stopping: threading.Event, store: Store,
                 finished: Callable[[str], None]) -> None:
        self.index, self.ctx, self.settings, self.finished = index, ctx, settings, finished
        self.jobs, self.stopping, self.store = jobs, stopping, store
        self.process: Any = None
        self.conn: Connection | None = None
        self.ready = False
        self.job_id: str | None = None
        self.kill_reason: str | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=f"graddoctor-pool-{index}",
                                       daemon=True)

    def _loop(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self._ensure_process():
                    time.sleep(1.0)
                    continue
                try:
                    job_id = self.jobs.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                self._run(job_id)
        finally:
            self._kill("shutdown")

    def _ensure_process(self) -> bool:
        if self.process is not None and self.process.is_alive():
            return True
        self.ready = False
        started = time.monotonic()
        parent, child = self.ctx.Pipe()
        self.process = self.ctx.Process(
            target=child_main, args=(child, self.settings.model_dump()),
            name=f"graddoctor-worker-{self.index}", daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        while time.monotonic() - started < READY_TIMEOUT_S and not self.stopping.is_set():
            if parent.poll(POLL_S):
                try:
                    message = parent.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "ready":
                    self.ready = True
                    log.info("worker %d (pid %s) ready in %.1f s", self.index, message[1],
                             time.monotonic() - started)
                    return True
            if not self.process.is_alive():
                break
        if not self.stopping.is_set():
            log.error("worker %d did not start (%s)", self.index,
                      describe_exit(self.process.exitcode))
        self._kill("failed start")
        return False

    def _run(self, job_id: str) -> None:
        with self.lock:
            self.job_id, self.kill_reason = job_id, None
        deadline = time.monotonic() + self.settings.job_time_limit_s + GRACE_S
        assert self.conn is not None
        try:
            self.conn.send(job_id)
        except OSError:
            pass  # the process is gone; noticed below
        while True:
            ready = wait([self.conn, self.process.sentinel], timeout=POLL_S)
            if self.conn in ready and self._done(job_id):
                break
            if not self.process.is_alive():
                self._record_death(job_id)
                break
            if self.stopping.is_set():
                self._kill("shutdown")
            elif time.monotonic() > deadline:
                self._kill("time")
        with self.lock:
            self.job_id = None
        self.finished(job_id)  # a death or a kill is stored by now too

    def _done(self, job_id: str) -> bool:
        assert self.conn is not None
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            return False
        if message == ("stored", job_id):  # the result is in; the worker draws the page next
            self.finished(job_id)
            return False
        if not (isinstance(message, tuple) and message[:2] == ("done", job_id)):
            return False
        if len(message) > 2 and message[2]:  # retiring: wait for it to exit, then start afresh
            self.process.join(timeout=GRACE_S)
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=GRACE_S)
            self.ready = False
        return True

    def _record_death(self, job_id: str) -> None:
        self.process.join(timeout=1.0)
        cause = describe_exit(self.process.exitcode)
        reason, self.ready = self.kill_reason, False
        if reason == "time":
            failure = time_failure(self.settings)
        elif reason == "shutdown":
            failure = Failure("worker_lost", "the service stopped while this job was running; "
                              "submit it again")
        else:
            failure = Failure(
                "worker_lost", f"the worker process running this job died ({cause}): it was "
                "killed, ran out of memory or crashed in native code. The pool started a "
                "replacement; other jobs were not affected.",
                {"exit_code": self.process.exitcode})
        if reason != "cancelled":
            self.store.fail(job_id, failure)
        log.warning("worker %d running job %s ended (%s, reason: %s)", self.index, job_id, cause,
                    reason or "died")

    def kill_if_running(self, job_id: str, reason: str) -> None:
        with self.lock:
            if self.job_id == job_id:
                self._kill(reason)

    def _kill(self, reason: str) -> None:
        self.kill_reason = self.kill_reason or reason
        if self.process is not None and self.process.is_alive():
            self.process.kill()
