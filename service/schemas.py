"""What crosses the HTTP boundary: request and response bodies, with OpenAPI examples."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_SPEC: dict[str, Any] = {
    "name": "deep-sigmoid-mlp",
    "inputs": [{"name": "x", "shape": [8, 16]}],
    "layers": [
        {"type": "Linear", "in_features": 16, "out_features": 32},
        {"type": "Sigmoid"},
        {"type": "Linear", "in_features": 32, "out_features": 32},
        {"type": "Sigmoid"},
        {"type": "Linear", "in_features": 32, "out_features": 1},
    ],
}


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the job will not change any more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobKind(StrEnum):
    ONNX = "onnx"
    SPEC = "spec"


class ErrorBody(BaseModel):
    """Every error response: a stable type, a sentence, and the facts behind it where known."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "examples": [{"error": "invalid_config", "detail": "config.batch_size: Input should be "
                      "greater than or equal to 1", "field": "batch_size"}]})

    error: str = Field(description="Stable snake_case error type.")
    detail: str = Field(description="What is wrong, naming the field, node or op.")


class JobCreate(BaseModel):
    """A diagnosis of a JSON architecture spec (ONNX files go as multipart/form-data)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"spec": EXAMPLE_SPEC, "config": {"samples": 1, "batch_size": 4}}]})

    spec: dict[str, Any] = Field(description="The architecture spec (see the engine's README).")
    config: dict[str, Any] | None = Field(
        None, description="DiagnosisConfig fields; unknown fields are an error."
    )


class JobError(BaseModel):
    type: str = Field(description="Error type: the engine's (invalid_model, unsupported_operator, "
                      "...) or the service's (job_time_limit, job_memory_limit, worker_lost, "
                      "internal_error).")
    detail: str
    context: dict[str, Any] | None = Field(None, description="Facts behind the detail.")


class JobLinks(BaseModel):
    self: str
    report: str = Field(description="HTML report (once the job has succeeded).")


class JobSummary(BaseModel):
    """A job without its report (list entries)."""

    id: str = Field(description="Unguessable job id.")
    status: JobStatus
    kind: JobKind
    filename: str | None = Field(None, description="Name of the uploaded ONNX file.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: str | None = Field(None, description="Stage the running job has reached.")
    attempts: int = Field(0, description="How many times a worker started the job.")
    reused_from: str | None = Field(
        None, description="Set when an identical earlier job (same model, inputs and config) "
        "supplied this result instead of a new run.",
    )
    verdict: str | None = Field(
        None, description="healthy | vanishing | exploding | inconclusive, once succeeded."
    )
    error: JobError | None = None
    links: JobLinks


class JobRead(JobSummary):
    """A job and, once it has succeeded, the engine's report."""

    result: dict[str, Any] | None = Field(None, description="The engine's report (JSON).")


class JobList(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int
    next: str | None = Field(None, description="URL of the next page, if any.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
