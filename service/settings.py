"""Every knob of the service, read once from ``GRADDOCTOR_*`` environment variables.

The defaults run the embedded mode with no configuration at all: SQLite and uploads under the
user's data directory, a pool of worker processes inside ``graddoctor serve``. Setting
``GRADDOCTOR_BROKER_URL`` and ``GRADDOCTOR_DATABASE_URL`` switches to the distributed mode.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from diagnostics.limits import DEFAULT_LIMITS, Limits

MIB = 1024 * 1024


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("graddoctor", appauthor=False))


def _default_workers() -> int:
    # Half the cores: each worker also gets torch threads, and the API needs some CPU too.
    return max(1, (os.cpu_count() or 2) // 2)


class Settings(BaseSettings):
    """Service settings; each field is the environment variable ``GRADDOCTOR_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="GRADDOCTOR_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Uploads, reports and (by default) the SQLite database live here. Shared "
        "between the API and the workers in distributed mode.",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; default sqlite in the data dir. "
        "postgresql://user:pass@host/db for the distributed mode.",
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://host:6379/0). Unset: embedded worker pool.",
    )
    queue: str = Field("graddoctor", description="Celery queue name.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated API keys. When set, /v1 needs 'Authorization: Bearer "
        "<key>' and each key sees only its own jobs.",
    )
    max_upload_bytes: int = Field(100 * MIB, ge=1024, description="Largest request body.")
    read_timeout_s: float = Field(
        60.0, gt=0,
        description="Longest pause between two chunks of an upload before it is dropped.",
    )
    job_time_limit_s: float = Field(600.0, gt=0, description="Wall-time limit of one job.")
    job_memory_limit_mb: int = Field(
        4096, ge=64, description="Memory a job may allocate on top of its warm worker process.",
    )
    max_parameters: int = Field(
        DEFAULT_LIMITS.max_parameters, ge=1,
        description="Engine budget: trainable weight elements of one model (sum over weights).",
    )
    max_nodes: int = Field(
        DEFAULT_LIMITS.max_nodes, ge=1,
        description="Engine budget: ONNX nodes (subgraphs and functions included) or spec layers "
        "after expanding Repeat.",
    )
    max_nesting: int = Field(
        DEFAULT_LIMITS.max_nesting, ge=1,
        description="Engine budget: depth of nested ONNX subgraphs (If/Loop/Scan) or spec "
        "containers.",
    )
    max_tensor_elements: int = Field(
        DEFAULT_LIMITS.max_tensor_elements, ge=1,
        description="Engine budget: elements of any one tensor, declared, inferred or "
        "synthesized.",
    )
    max_input_elements: int = Field(
        DEFAULT_LIMITS.max_input_elements, ge=1,
        description="Engine budget: elements of all sample inputs of one batch together.",
    )
    job_max_attempts: int = Field(
        2, ge=1, le=10, description="Starts allowed per job; a job whose worker dies this many "
        "times (distributed mode) ends failed instead of being redelivered forever.",
    )
    workers: int = Field(
        default_factory=_default_workers, ge=1, le=64,
        description="Worker processes (embedded pool size, or Celery concurrency).",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per worker; default cores / workers.",
    )
    retention_hours: float = Field(
        168.0, ge=0,
        description="Finished jobs and their files are deleted after this; 0 keeps them.",
    )
    sweep_interval_s: float = Field(
        60.0, gt=0,
        description="Seconds between two rounds of the API's housekeeping: retention cleanup, "
        "abandoned uploads and, in distributed mode, re-sending jobs whose queue message the "
        "broker lost (a broker restart without persistence).",
    )
    broker_visibility_timeout_s: float | None = Field(
        None, gt=0,
        description="Distributed mode: seconds after which a job taken by a worker that vanished "
        "without a word (its machine or main process killed) goes to another worker. Must be "
        "longer than any job runs; default the job time limit plus 150 s.",
    )
    log_level: str = Field("info", description="Log level of the API and the workers.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _visibility_outlasts_jobs(self) -> Settings:
        # A shorter timeout hands a job that is still running to a second worker.
        timeout = self.broker_visibility_timeout_s
        if timeout is not None and timeout <= self.job_time_limit_s:
            raise ValueError(f"broker_visibility_timeout_s ({timeout:g}) must be longer than "
                             f"job_time_limit_s ({self.job_time_limit_s:g})")
        return self

    @property
    def store_url(self) -> str:
        """The database URL with a driver SQLAlchemy can use (psycopg 3 for PostgreSQL)."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'graddoctor.db'}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    @property
    def distributed(self) -> bool:
        """True when jobs go through Celery instead of the embedded pool."""
        return bool(self.broker_url)

    @property
    def threads_per_worker(self) -> int:
        """torch intra-op threads for each worker process."""
        return self.torch_threads or max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def limits(self) -> Limits:
        """The engine's budgets for every job (a user's config cannot raise them)."""
        return Limits(max_model_bytes=self.max_upload_bytes, max_parameters=self.max_parameters,
                      max_nodes=self.max_nodes, max_nesting=self.max_nesting,
                      max_tensor_elements=self.max_tensor_elements,
                      max_input_elements=self.max_input_elements)

    @property
    def job_memory_limit_bytes(self) -> int:
        """The job memory limit in bytes."""
        return self.job_memory_limit_mb * MIB


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings`` and pass them in)."""
    return Settings()
