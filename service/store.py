"""Job records through SQLAlchemy 2: one code path for SQLite (embedded) and PostgreSQL.

State changes are single conditional UPDATEs (``... WHERE status = 'running' AND attempts = n``),
so an API process and any number of workers can race on a job without locks: a late result
never overwrites a cancellation, and a redelivered job is claimed once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, sessionmaker

from diagnostics.report import Status
from service.schemas import JobStatus

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = tuple(status for status in JobStatus if status.finished)
VERDICTS = tuple(status.value for status in Status)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    __tablename__ = "graddoctor_jobs"
    __table_args__ = (Index("ix_graddoctor_jobs_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    filename: Mapped[str | None] = mapped_column(String(255))
    has_inputs: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[str | None] = mapped_column(String(255))
    reused_from: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    error_context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = deferred(mapped_column(JSON))


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: the attempt number guards every later write."""

    job_id: str
    attempt: int
    kind: str
    config: dict[str, Any] | None
    has_inputs: bool


@dataclass(frozen=True)
class Failure:
    type: str
    detail: str
    context: dict[str, Any] | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker process writes; busy_timeout makes writers queue.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout, PostgreSQL a pre-ping pool."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         connect_args={"connect_timeout": 5})


class Store:
    """Job records. Every method opens and closes its own short transaction."""

    def __init__(self, url: str) -> None:
        self.engine = create_store_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create the tables if missing (idempotent; safe with several processes starting)."""
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                return
            except (IntegrityError, ProgrammingError):
                # Another process created the same table between our check and our CREATE
                # (PostgreSQL); the next round finds it.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def add(self, record: JobRecord) -> None:
        with self._session.begin() as session:
            session.add(record)

    def get(self, job_id: str, *, with_result: bool = False) -> JobRecord | None:
        with self._session() as session:
            record = session.get(JobRecord, job_id)
            if record is not None and with_result:
                _ = record.result  # load the deferred column while the session is open
            return record

    def page(self, owner: str, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        """One page of ``owner``'s jobs, newest first, and their total count."""
        with self._session() as session:
            total = session.scalar(select(func.count()).where(JobRecord.owner == owner)) or 0
            rows = session.scalars(
                select(JobRecord).where(JobRecord.owner == owner)
                .order_by(JobRecord.created_at.desc(), JobRecord.id).limit(limit).offset(offset)
            ).all()
            return list(rows), total

    def find_reusable(self, owner: str, content_hash: str) -> JobRecord | None:
        """The newest succeeded job of ``owner`` with the same content hash."""
        with self._session() as session:
            record = session.scalars(
                select(JobRecord).where(JobRecord.owner == owner,
                                        JobRecord.content_hash == content_hash,
                                        JobRecord.status == JobStatus.SUCCEEDED)
                .order_by(JobRecord.created_at.desc()).limit(1)
            ).first()
            if record is not None:
                _ = record.result
            return record

    def _update(self, job_id: str, where: Iterable[Any], **values: Any) -> bool:
        with self._session.begin() as session:
            result = session.execute(
                update(JobRecord).where(JobRecord.id == job_id, *where).values(**values)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def claim(self, job_id: str, *, worker: str, max_attempts: int,
              reclaim: bool = False) -> Claim | None:
        """Mark the job running for a new attempt; None if it is not ours to run.

        With ``reclaim`` (the broker redelivered the message because the worker that took it
        died), a job found ``running`` is run again while attempts remain, else it ends failed,
        so it never loops forever. Without it, a job found ``running`` belongs to a live worker:
        a duplicate message (a re-sent lost job that was not lost after all) never starts a
        second run.
        """
        now = utcnow()
        claimable = ACTIVE if reclaim else (JobStatus.QUEUED,)
        claimed = self._update(
            job_id, [JobRecord.status.in_(claimable), JobRecord.attempts < max_attempts],
            status=JobStatus.RUNNING, attempts=JobRecord.attempts + 1, started_at=now,
            worker=worker, progress="starting",
        )
        record = self.get(job_id)
        if record is None:
            return None
        if not claimed:
            if reclaim and record.status == JobStatus.RUNNING:
                failure = Failure("worker_lost", f"the worker process died on each of "
                                  f"{record.attempts} attempts (killed, or out of memory); "
                                  "not retrying")
                self._update(job_id, [JobRecord.status == JobStatus.RUNNING],
                             **_failed_values(failure, record.started_at))
            return None
        return Claim(job_id, record.attempts, record.kind, record.config, record.has_inputs)

    def set_progress(self, claim: Claim, progress: str) -> None:
        self._update(claim.job_id, [JobRecord.status == JobStatus.RUNNING,
                                    JobRecord.attempts == claim.attempt], progress=progress[:255])

    def succeed(self, claim: Claim, result: dict[str, Any], verdict: str) -> bool:
        """Store the report, unless the job was cancelled or re-claimed meanwhile."""
        record = self.get(claim.job_id)
        started = record.started_at if record else None
        return self._update(
            claim.job_id,
            [JobRecord.status == JobStatus.RUNNING, JobRecord.attempts == claim.attempt],
            status=JobStatus.SUCCEEDED, result=result, verdict=verdict, progress=None,
            finished_at=utcnow(), duration_s=_seconds_since(started),
        )

    def fail(self, job_id: str, failure: Failure, *, attempt: int | None = None) -> bool:
        """End an active job failed (only the given attempt's, when ``attempt`` is set)."""
        where: list[Any] = [JobRecord.status.in_(ACTIVE)]
        if attempt is not None:
            where += [JobRecord.status == JobStatus.RUNNING, JobRecord.attempts == attempt]
        record = self.get(job_id)
        return self._update(job_id, where, **_failed_values(
            failure, record.started_at if record else None))

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it had already finished."""
        return self._update(job_id, [JobRecord.status.in_(ACTIVE)], status=JobStatus.CANCELLED,
                            finished_at=utcnow(), progress=None)

    def delete(self, job_id: str) -> None:
        with self._session.begin() as session:
            session.execute(delete(JobRecord).where(JobRecord.id == job_id))

    def ids_with_status(self, status: str) -> list[str]:
        with self._session() as session:
            return list(session.scalars(
                select(JobRecord.id).where(JobRecord.status == status)
                .order_by(JobRecord.created_at)))

    def queued_before(self, cutoff: datetime) -> list[str]:
        """Jobs still queued that were created before ``cutoff``."""
        with self._session() as session:
            return list(session.scalars(select(JobRecord.id).where(
                JobRecord.status == JobStatus.QUEUED, JobRecord.created_at < cutoff)
                .order_by(JobRecord.created_at)))

    def running_since(self, cutoff: datetime) -> list[str]:
        """Jobs still running that started before ``cutoff``."""
        with self._session() as session:
            return list(session.scalars(select(JobRecord.id).where(
                JobRecord.status == JobStatus.RUNNING, JobRecord.started_at < cutoff)))

    def finished_before(self, cutoff: datetime) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(JobRecord.id).where(
                JobRecord.status.in_(FINISHED), JobRecord.finished_at < cutoff)))

    def count_by_status(self) -> dict[str, int]:
        with self._session() as session:
            rows = session.execute(
                select(JobRecord.status, func.count()).group_by(JobRecord.status)).all()
        counts: dict[str, int] = dict.fromkeys(ACTIVE + FINISHED, 0)
        counts.update({status: int(count) for status, count in rows})
        return counts

    def count_by_verdict(self) -> dict[str, int]:
        """Succeeded jobs by verdict status."""
        with self._session() as session:
            rows = session.execute(
                select(JobRecord.verdict, func.count()).where(JobRecord.verdict.is_not(None))
                .group_by(JobRecord.verdict)).all()
        counts = dict.fromkeys(VERDICTS, 0)
        counts.update({verdict: int(count) for verdict, count in rows if verdict is not None})
        return counts

    def duration_histogram(self) -> tuple[list[int], float, int]:
        """Cumulative counts per ``DURATION_BUCKETS``, the sum and the count of job durations."""
        done = JobRecord.duration_s.is_not(None)
        columns = [func.sum(case((JobRecord.duration_s <= bound, 1), else_=0))
                   for bound in DURATION_BUCKETS]
        with self._session() as session:
            row = session.execute(select(
                *columns, func.coalesce(func.sum(JobRecord.duration_s), 0.0), func.count()
            ).where(done)).one()
        return [int(value or 0) for value in row[:-2]], float(row[-2]), int(row[-1])


def _seconds_since(started: datetime | None) -> float | None:
    return (utcnow() - started).total_seconds() if started else None


def _failed_values(failure: Failure, started: datetime | None) -> dict[str, Any]:
    return {"status": JobStatus.FAILED, "error_type": failure.type, "error_detail": failure.detail,
            "error_context": failure.context or None, "finished_at": utcnow(), "progress": None,
            "duration_s": _seconds_since(started)}


def stale_cutoff(limit_s: float) -> datetime:
    """The start time before which a running job has overrun ``limit_s``."""
    return utcnow() - timedelta(seconds=limit_s)
