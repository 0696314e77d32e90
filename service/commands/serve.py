"""`graddoctor serve`: the HTTP API, with its embedded worker pool unless a broker is set."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from service.exit_codes import ExitCode


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the HTTP API (and, by default, its worker pool)",
        description="Run the GradDoctor HTTP API. With no configuration it keeps jobs in SQLite "
        "under the data directory and runs them on a pool of worker processes inside this "
        "process; with GRADDOCTOR_BROKER_URL set, jobs go to `graddoctor worker` processes.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes in the embedded pool (default GRADDOCTOR_WORKERS, "
                        "else half the cores)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {"workers": args.workers} if args.workers else {}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode = ("distributed (Celery)" if settings.distributed
            else f"embedded, {settings.workers} workers")
    logging.getLogger("graddoctor.api").info("GradDoctor on http://%s:%d (%s), data in %s",
                                             args.host, args.port, mode, settings.data_dir)
    uvicorn.run(create_app(settings), host=args.host, port=args.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=5,
                proxy_headers=False)
    return ExitCode.HEALTHY
