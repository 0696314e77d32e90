"""Errors that know their HTTP status, and the handlers that render every error the same way.

Every error body is ``{"error": <type>, "detail": <message>}`` (plus facts such as ``field`` or
``node`` where we have them). A failed diagnosis is not an HTTP error: it is a job with
``status: failed``; these are for requests we refuse.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from diagnostics.errors import DiagnosticsError

log = logging.getLogger("graddoctor.api")


class ServiceError(Exception):
    """Base class: a request we refuse, with its HTTP status and a stable ``error`` type."""

    status = 500
    error = "internal_error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None,
                 **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.context = {key: value for key, value in context.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": self.error, "detail": self.detail, **self.context}


class BadRequestError(ServiceError):
    status, error = 400, "bad_request"


class UnauthorizedError(ServiceError):
    status, error = 401, "unauthorized"


class NotFoundError(ServiceError):
    status, error = 404, "not_found"


class ConflictError(ServiceError):
    status, error = 409, "conflict"


class RequestTimeoutError(ServiceError):
    status, error = 408, "request_timeout"


class PayloadTooLargeError(ServiceError):
    status, error = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status, error = 415, "unsupported_media_type"


class InvalidRequestError(ServiceError):
    status, error = 422, "validation_error"


class ServiceUnavailableError(ServiceError):
    status, error = 503, "service_unavailable"


class InsufficientStorageError(ServiceError):
    status, error = 507, "insufficient_storage"


# DiagnosticsError (user input the library refused) -> status. Looked up along the class's MRO by
# error_type, so a new subclass inherits its parent's status; anything unlisted is a 400.
DIAGNOSTICS_STATUS: dict[str, int] = {
    "invalid_config": 422,
    "invalid_spec": 422,
    "invalid_model": 422,
    "external_data": 422,
    "unsupported_operator": 422,
    "invalid_inputs": 422,
    "resource_limit": 422,
    "probe_failed": 422,
}


def diagnostics_status(exc: DiagnosticsError) -> int:
    """The HTTP status for a library error."""
    for cls in type(exc).__mro__:
        status = DIAGNOSTICS_STATUS.get(getattr(cls, "error_type", ""))
        if status:
            return status
    return 400


def _body(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    return ".".join(parts) or "request"


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _body(exc.status, exc.to_dict(), exc.headers)


async def _diagnostics_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DiagnosticsError)
    return _body(diagnostics_status(exc), exc.to_dict())


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _location(tuple(first.get("loc", ())))
    return _body(422, {"error": "validation_error", "detail": f"{field}: {first['msg']}",
                       "field": field})


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _body(exc.status_code, {"error": error, "detail": str(exc.detail)},
                 dict(exc.headers) if exc.headers else None)


# errno values that mean "the disk (or this process's share of it) is full".
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_SPACE_DETAIL = "no space left on the server's storage; try again later"


def _no_space() -> JSONResponse:
    return _body(507, InsufficientStorageError(NO_SPACE_DETAIL).to_dict())


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    if "disk is full" in str(exc):  # SQLite on a full data directory
        log.warning("job store: disk full")
        return _no_space()
    log.warning("job store unavailable: %s", exc.__class__.__name__)
    return _body(503, {"error": "store_unavailable", "detail": "the job store is unreachable; "
                       "try again shortly"})


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OSError)
    if exc.errno in NO_SPACE:
        log.warning("no space left on the data directory (%s)", errno.errorcode.get(
            exc.errno or 0, exc.errno))
        return _no_space()
    return await _unexpected(request, exc)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return _body(500, {"error": "internal_error", "detail": "unexpected server error; see the "
                       "server log"})


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as ``{"error", "detail"}`` with its status."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(DiagnosticsError, _diagnostics_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OperationalError, _store_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected)
