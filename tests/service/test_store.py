"""The job store on both backends (SQLite file, a fresh PostgreSQL database): one code path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store import Failure, JobRecord, Store, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://")
    store = Store(url)
    store.create_schema()
    store.create_schema()  # idempotent
    yield store
    store.dispose()


def _add(store: Store, job_id: str, owner: str = "", content_hash: str = "h") -> None:
    store.add(JobRecord(id=job_id, owner=owner, status="queued", kind="spec", has_inputs=False,
                        config={"samples": 1}, content_hash=content_hash, created_at=utcnow(),
                        attempts=0, result=None))


def test_claim_counts_attempts_and_ends_a_job_that_keeps_dying(store: Store) -> None:
    _add(store, "job-aaaaaaaaaaaaaaaa")
    first = store.claim("job-aaaaaaaaaaaaaaaa", worker="w:1", max_attempts=2)
    assert first is not None
    assert first.attempt == 1
    assert first.config == {"samples": 1}
    second = store.claim("job-aaaaaaaaaaaaaaaa", worker="w:2", max_attempts=2, reclaim=True)
    assert second is not None
    assert second.attempt == 2
    assert store.claim("job-aaaaaaaaaaaaaaaa", worker="w:3", max_attempts=2, reclaim=True) is None
    record = store.get("job-aaaaaaaaaaaaaaaa")
    assert record is not None
    assert record.status == "failed"
    assert record.error_type == "worker_lost"
    assert "2 attempts" in (record.error_detail or "")


def test_a_duplicate_message_never_takes_a_running_job(store: Store) -> None:
    _add(store, "job-dddddddddddddddd")
    first = store.claim("job-dddddddddddddddd", worker="w:1", max_attempts=1)
    assert first is not None
    assert store.claim("job-dddddddddddddddd", worker="w:2", max_attempts=1) is None
    record = store.get("job-dddddddddddddddd")
    assert record is not None
    assert (record.status, record.attempts, record.worker) == ("running", 1, "w:1")
    assert store.succeed(first, {"ok": True}, "healthy")


def test_late_results_never_overwrite(store: Store) -> None:
    _add(store, "job-bbbbbbbbbbbbbbbb")
    old = store.claim("job-bbbbbbbbbbbbbbbb", worker="w:1", max_attempts=3)
    new = store.claim("job-bbbbbbbbbbbbbbbb", worker="w:2", max_attempts=3, reclaim=True)
    assert old is not None
    assert new is not None
    assert not store.succeed(old, {"stale": True}, "healthy")  # superseded attempt
    assert store.cancel("job-bbbbbbbbbbbbbbbb")
    assert not store.succeed(new, {"late": True}, "healthy")
    assert not store.fail("job-bbbbbbbbbbbbbbbb", Failure("x", "y"))
    record = store.get("job-bbbbbbbbbbbbbbbb", with_result=True)
    assert record is not None
    assert record.status == "cancelled"
    assert record.result is None
    assert store.claim("job-bbbbbbbbbbbbbbbb", worker="w:3", max_attempts=3, reclaim=True) is None


def test_success_is_stored_with_duration_and_counted(store: Store) -> None:
    _add(store, "job-cccccccccccccccc", owner="alice", content_hash="same")
    claim = store.claim("job-cccccccccccccccc", worker="w:1", max_attempts=2)
    assert claim is not None
    store.set_progress(claim, "probe")
    assert store.get("job-cccccccccccccccc").progress == "probe"  # type: ignore[union-attr]
    assert store.succeed(claim, {"verdict": {"status": "healthy"}}, "healthy")
    record = store.get("job-cccccccccccccccc", with_result=True)
    assert record is not None
    assert record.result == {"verdict": {"status": "healthy"}}
    assert record.duration_s is not None
    assert record.duration_s >= 0
    assert record.finished_at is not None
    assert record.finished_at.tzinfo is not None
    assert store.find_reusable("alice", "same") is not None
    assert store.find_reusable("bob", "same") is None  # never across owners
    counts = store.count_by_status()
    assert counts["succeeded"] >= 1
    assert set(counts) >= {"queued", "running", "failed"}
    buckets, total, count = store.duration_histogram()
    assert count >= 1
    assert buckets == sorted(buckets)
    assert buckets[-1] <= count
    assert total >= 0


def test_pages_are_per_owner_newest_first(store: Store) -> None:
    for index in range(3):
        _add(store, f"job-page{index}-{'d' * 10}", owner="carol")
    items, total = store.page("carol", limit=2, offset=0)
    assert total == 3
    assert [item.id for item in items] == [f"job-page{i}-{'d' * 10}" for i in (2, 1)]
    assert store.page("dave", limit=10, offset=0) == ([], 0)
    store.delete(f"job-page0-{'d' * 10}")
    assert store.page("carol", limit=10, offset=0)[1] == 2
