"""`graddoctor worker`: a Celery worker for the distributed mode."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from service.exit_codes import ExitCode


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="run a Celery worker (distributed mode)",
        description="Run diagnosis jobs from the queue at GRADDOCTOR_BROKER_URL, recording them "
        "in GRADDOCTOR_DATABASE_URL and reading uploads from GRADDOCTOR_DATA_DIR (shared with the "
        "API). Start as many as you like, on as many machines.")
    parser.add_argument("--concurrency", type=int, default=None, metavar="N",
                        help="worker processes (default GRADDOCTOR_WORKERS)")
    parser.add_argument("--name", default=None,
                        help="Celery node name (default graddoctor-<pid>@<host>)")
    parser.add_argument("--ping", action="store_true",
                        help="check that a worker answers (for health checks) and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.store import Store

    settings = get_settings()
    if not settings.broker_url:
        print("graddoctor worker: GRADDOCTOR_BROKER_URL is not set (the embedded mode needs no "
              "worker: `graddoctor serve` runs its own)")
        return ExitCode.BAD_INPUT
    from service.workers.tasks import app

    if args.ping:
        return _ping(app)
    Store(settings.store_url).create_schema()
    # Loaded here, before Celery forks its pool, so every child (and every replacement of a
    # killed one) starts with the engine already imported.
    import service.workers.preload  # noqa: F401
    name = args.name or f"graddoctor-{os.getpid()}@%h"
    argv = ["worker", f"--concurrency={args.concurrency or settings.workers}",
            f"--loglevel={settings.log_level.upper()}", f"--queues={settings.queue}",
            f"--hostname={name}", "--pool=prefork", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    app.worker_main(argv)
    return ExitCode.HEALTHY


def _ping(app: Any) -> int:
    host = socket.gethostname()
    replies = app.control.ping(timeout=1.5) or []
    mine = [name for reply in replies for name in reply if name.endswith(f"@{host}")]
    print("ok" if mine else "no worker answered on this host")
    return ExitCode.HEALTHY if mine else ExitCode.INTERNAL
