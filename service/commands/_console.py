"""What a local run shows on the user's terminal: the report (stdout or --output), one-line
errors, progress with an ETA, and no third-party warnings unless asked for.

Converters and tracers warn about their own internals (onnx2torch's ``UserWarning`` about
non-tuple indexing, torch's ``TracerWarning``s): nothing a user can act on, and noise around a
report a pipeline log must show clearly. ``--verbose`` lets them through.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.exit_codes import ExitCode


def fail(message: str, code: ExitCode) -> int:
    """The CLI's one-line error on stderr; returns the exit status to end with."""
    print(f"graddoctor: error: {message}", file=sys.stderr)
    return code


def emit(text: str, output: str | None) -> int | None:
    """Write ``text`` to the ``--output`` file, or to stdout (newline-terminated).

    Returns:
        None when written, else the exit status of the one-line error already printed.
    """
    if output:
        try:
            Path(output).write_text(text)
        except OSError as exc:
            return fail(f"cannot write {output}: {exc.strerror}", ExitCode.BAD_INPUT)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return None


# "probing sample 2/3", "verifying remedy 1/4 (reinitialize)": a stage name and a count.
_COUNTED = re.compile(r"^(?P<stage>.*?)\s(?P<done>\d+)/(?P<total>\d+)\b")


@contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Silence Python warnings and library log records below ERROR, unless ``verbose``.

    Warnings are silenced only inside the block (``catch_warnings`` restores the filters), so an
    in-process caller (tests calling ``main()``) keeps its own filters afterwards.
    """
    if verbose:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # each one, even if it was shown in this process
            yield
        return
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


class EtaEstimator:
    """Turns pipeline progress messages into ``message · ETA 12 s``.

    A counted stage (``... k/n``) is timed from the moment its first unit started; when unit k
    starts, k-1 units took ``elapsed`` and the n-k+1 left are estimated at the same pace.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stage: str | None = None
        self._started = 0.0

    def __call__(self, message: str) -> str:
        match = _COUNTED.match(message)
        if match is None:
            self._stage = None
            return message
        stage, done, total = match["stage"], int(match["done"]), int(match["total"])
        now = self._clock()
        if stage != self._stage or done == 1:
            self._stage, self._started = stage, now
            return message
        per_unit = (now - self._started) / (done - 1)
        return f"{message} · ETA {_duration(per_unit * (total - done + 1))}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


@contextmanager
def progress_display() -> Iterator[Callable[[str], None]]:
    """A status line on stderr while the passes run, when stderr is a terminal (else nothing)."""
    if not sys.stderr.isatty():
        yield lambda _message: None
        return
    from rich.console import Console

    eta = EtaEstimator()
    with Console(stderr=True).status("graddoctor: starting") as status:
        yield lambda message: status.update(f"graddoctor: {eta(message)}")
