"""Request dependencies: the JobService and the caller's identity (API key -> owner)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import UnauthorizedError
from service.jobs import JobService

ANONYMOUS = ""

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from GRADDOCTOR_API_KEYS. Not needed when the service has no keys.",
)


def owner_id(key: str) -> str:
    """What the store keeps for a key: a hash, so keys are never written anywhere."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def get_jobs(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


def get_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's owner id; 401 when keys are configured and none valid was sent."""
    keys: tuple[str, ...] = request.app.state.settings.api_keys
    if not keys:
        return ANONYMOUS
    given = credentials.credentials if credentials else ""
    # Compare against every key so the time taken does not tell which prefix matched.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    if not given or not any(matches):
        raise UnauthorizedError("a valid API key is required: 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
    return owner_id(given)


Jobs = Annotated[JobService, Depends(get_jobs)]
Owner = Annotated[str, Depends(get_owner)]
