"""Per-job limits inside a worker process: wall time, address space, working directory.

The supervisor (the embedded pool, or Celery's hard time limit) kills a job that ignores these,
e.g. one stuck in a long native call; these let a job that can still be interrupted end with a
precise error and leave its worker process usable.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class JobTimeLimitError(BaseException):
    """Raised in the job by the wall-time alarm.

    A BaseException, like KeyboardInterrupt, so that code which catches ``Exception`` and wraps
    it (a model's forward pass, the engine's probe) cannot turn it into an ordinary failure.
    """


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`JobTimeLimitError` in the main thread after ``seconds`` of wall time."""
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise JobTimeLimitError(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def address_space_bytes() -> int | None:
    """This process's virtual memory size (Linux), or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def memory_limit(extra_bytes: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``extra_bytes`` (RLIMIT_AS).

    Measured from the warm worker, whose torch libraries already map a lot of virtual memory,
    so the limit is what the job itself may allocate. Allocations past it fail (MemoryError,
    or a torch allocation error) instead of pushing the machine into the OOM killer.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        yield
        return
    current = address_space_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if current is None:
        yield
        return
    target = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    resource.setrlimit(resource.RLIMIT_AS, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def isolated_cwd() -> Iterator[str]:
    """Run in a fresh empty directory, so a relative path in a model resolves to nothing."""
    previous = os.getcwd()
    folder = tempfile.mkdtemp(prefix="graddoctor-job-")
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)
        shutil.rmtree(folder, ignore_errors=True)
