"""Housekeeping: retention, abandoned uploads, jobs whose workers all vanished, restarts."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from service.blobs import BlobStore
from service.maintenance import recover_interrupted, stale_after_s, sweep
from service.settings import Settings
from service.store import JobRecord, Store, utcnow


class _Queue:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.ids.append(job_id)


def _setup(tmp_path: Path, **settings: object) -> tuple[Settings, Store, BlobStore]:
    config = Settings(data_dir=tmp_path, **settings)  # type: ignore[arg-type]
    store = Store(config.store_url)
    store.create_schema()
    blobs = BlobStore(config.data_dir)
    blobs.create_dirs()
    return config, store, blobs


def _add(store: Store, blobs: BlobStore, job_id: str, status: str, age_h: float) -> None:
    when = utcnow() - timedelta(hours=age_h)
    store.add(JobRecord(id=job_id, owner="", status=status, kind="spec", has_inputs=False,
                        content_hash="h", created_at=when, started_at=when,
                        finished_at=when if status in ("succeeded", "failed") else None,
                        attempts=1, result=None))
    blobs.job_dir(job_id).mkdir()


def test_sweep_deletes_expired_jobs_and_stale_uploads(tmp_path: Path) -> None:
    settings, store, blobs = _setup(tmp_path, retention_hours=24)
    _add(store, blobs, "old-job-aaaaaaaaaaaa", "succeeded", age_h=48)
    _add(store, blobs, "new-job-aaaaaaaaaaaa", "failed", age_h=1)
    _add(store, blobs, "run-job-aaaaaaaaaaaa", "running", age_h=48)  # embedded: not the sweeper's
    abandoned = blobs.new_staging()
    os.utime(abandoned, (time.time() - 7200, time.time() - 7200))
    fresh = blobs.new_staging()
    sweep(store, blobs, settings)
    assert store.get("old-job-aaaaaaaaaaaa") is None
    assert not blobs.job_dir("old-job-aaaaaaaaaaaa").exists()
    assert store.get("new-job-aaaaaaaaaaaa") is not None
    assert store.get("run-job-aaaaaaaaaaaa").status == "running"  # type: ignore[union-attr]
    assert not abandoned.exists()
    assert fresh.exists()


def test_sweep_fails_jobs_no_worker_will_finish_in_distributed_mode(tmp_path: Path) -> None:
    settings, store, blobs = _setup(tmp_path, broker_url="redis://127.0.0.1:1/0",
                                    job_time_limit_s=60)
    hours = stale_after_s(settings) / 3600
    _add(store, blobs, "lost-job-aaaaaaaaaaa", "running", age_h=hours + 0.1)
    _add(store, blobs, "busy-job-aaaaaaaaaaa", "running", age_h=hours - 0.1)
    sweep(store, blobs, settings)
    lost = store.get("lost-job-aaaaaaaaaaa")
    assert lost is not None
    assert lost.status == "failed"
    assert lost.error_type == "worker_lost"
    assert store.get("busy-job-aaaaaaaaaaa").status == "running"  # type: ignore[union-attr]


def test_restart_fails_running_jobs_and_requeues_queued_ones(tmp_path: Path) -> None:
    _, store, blobs = _setup(tmp_path)
    _add(store, blobs, "was-running-aaaaaaaa", "running", age_h=0)
    _add(store, blobs, "was-queued-aaaaaaaaa", "queued", age_h=0)
    queue = _Queue()
    recover_interrupted(store, queue)  # type: ignore[arg-type]
    record = store.get("was-running-aaaaaaaa")
    assert record is not None
    assert record.status == "failed"
    assert "stopped" in (record.error_detail or "")
    assert queue.ids == ["was-queued-aaaaaaaaa"]
