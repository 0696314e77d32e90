"""Prometheus text exposition, computed from the job store at scrape time.

Reading the store (not in-process counters) gives the same numbers from every API replica and
survives restarts; the queries are a GROUP BY and one aggregate row.
"""

from __future__ import annotations

from service.jobs import Runner
from service.store import DURATION_BUCKETS, Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(store: Store, runner: Runner) -> str:
    """The metrics page."""
    lines = [
        "# HELP graddoctor_jobs Diagnosis jobs in the store, by status.",
        "# TYPE graddoctor_jobs gauge",
    ]
    lines += [f'graddoctor_jobs{{status="{status}"}} {count}'
              for status, count in sorted(store.count_by_status().items())]
    lines += [
        "# HELP graddoctor_verdicts Succeeded diagnoses in the store, by verdict status.",
        "# TYPE graddoctor_verdicts gauge",
    ]
    lines += [f'graddoctor_verdicts{{status="{verdict}"}} {count}'
              for verdict, count in sorted(store.count_by_verdict().items())]
    buckets, total, count = store.duration_histogram()
    lines += [
        "# HELP graddoctor_job_duration_seconds Time from start to end of finished jobs.",
        "# TYPE graddoctor_job_duration_seconds histogram",
    ]
    lines += [f'graddoctor_job_duration_seconds_bucket{{le="{bound:g}"}} {value}'
              for bound, value in zip(DURATION_BUCKETS, buckets, strict=True)]
    lines += [
        f'graddoctor_job_duration_seconds_bucket{{le="+Inf"}} {count}',
        f"graddoctor_job_duration_seconds_sum {total:.6f}",
        f"graddoctor_job_duration_seconds_count {count}",
    ]
    depth = runner.queue_depth()
    if depth is not None:
        lines += [
            "# HELP graddoctor_queue_depth Jobs waiting in the queue for a worker.",
            "# TYPE graddoctor_queue_depth gauge",
            f"graddoctor_queue_depth {depth}",
        ]
    return "\n".join(lines) + "\n"
