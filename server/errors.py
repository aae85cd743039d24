"""One exception handler: every error leaves the API as
``{"error": {"code": "...", "message": "..."}}`` with the right status code.
No traceback ever reaches a client; anything unexpected is logged and answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_507_INSUFFICIENT_STORAGE,
)
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from db.errors import (
    BatchClosed,
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidTransition,
    LeaseLost,
    QueueError,
    QueueFull,
    TaskNotFound,
    disk_full,
    unavailable,
)

log = logging.getLogger("tingji.server")


class ApiError(Exception):
    """An error the API raises on purpose, with its status and stable code."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def bad_request(message: str, code: str = "validation_error") -> ApiError:
    return ApiError(HTTP_400_BAD_REQUEST, code, message)


def body(code: str, message: str, status: int = 400) -> dict[str, Any]:
    """Every error's shape: ``{"error": {code, message}}``, plus OpenAI's ``type`` and
    ``param``, so clients of ``/v1/audio/transcriptions`` read it as they expect."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return {"error": {"code": code, "message": message, "type": kind, "param": None}}


def _respond(status: int, code: str, message: str,
             headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(body(code, message, status), status_code=status,
                    media_type=MediaType.JSON, headers=headers)


_QUEUE_STATUS: dict[type[QueueError], int] = {
    TaskNotFound: HTTP_404_NOT_FOUND,
    InvalidTransition: HTTP_409_CONFLICT,
    BatchClosed: HTTP_409_CONFLICT,
    IdempotencyConflict: HTTP_409_CONFLICT,
    IdempotencyMismatch: HTTP_409_CONFLICT,
    LeaseLost: HTTP_409_CONFLICT,
    QueueFull: HTTP_429_TOO_MANY_REQUESTS,
}


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra:
        if isinstance(item, dict):
            key = item.get("key") or item.get("source") or ""
            msg = item.get("message", "")
            parts.append(f"{key}: {msg}" if key else str(msg))
    detail = "; ".join(parts) or str(exc.detail or "invalid request")
    return detail.replace("`$.", "`")


def _fields(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """What a log line about this request carries (JSON logs show them as fields)."""
    return {"method": request.method, "path": request.url.path,
            "task_id": request.path_params.get("task_id")}


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, ApiError):
        return _respond(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, QueueFull):
        return _respond(HTTP_429_TOO_MANY_REQUESTS, exc.code, str(exc),
                        {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, QueueError):
        return _respond(_QUEUE_STATUS.get(type(exc), HTTP_409_CONFLICT), exc.code, str(exc))
    if isinstance(exc, ValidationException):
        return _respond(HTTP_400_BAD_REQUEST, "validation_error", _validation_message(exc))
    if isinstance(exc, NotAuthorizedException):
        return _respond(HTTP_401_UNAUTHORIZED, "unauthorized", str(exc.detail),
                        {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, NotFoundException):
        return _respond(HTTP_404_NOT_FOUND, "not_found", "no such resource")
    if isinstance(exc, HTTPException):
        code = {405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}\
            .get(exc.status_code, "http_error" if exc.status_code >= 500 else "bad_request")
        return _respond(exc.status_code, code, str(exc.detail), exc.headers)
    if isinstance(exc, RecursionError | UnicodeDecodeError):
        # the request body: JSON nested too deep, or bytes that are not UTF-8
        return _respond(HTTP_400_BAD_REQUEST, "malformed_body",
                        "the request body is not valid UTF-8 JSON of reasonable depth")
    if isinstance(exc, DataError):
        # a value that slipped past validation and the database cannot store
        log.warning("value refused by the database on %s: %s", request.url.path, exc,
                    extra=_fields(request))
        return _respond(HTTP_400_BAD_REQUEST, "validation_error",
                        "a value in the request cannot be stored (control characters?)")
    if unavailable(exc) or isinstance(exc, OperationalError | DBAPIError | ConnectionError):
        log.warning("database unavailable: %s", exc, extra=_fields(request))
        if disk_full(exc):
            return _respond(HTTP_507_INSUFFICIENT_STORAGE, "disk_full",
                            "the disk holding the database is full; nothing was stored",
                            {"Retry-After": "60"})
        busy = "locked" in str(exc).lower()
        return _respond(HTTP_503_SERVICE_UNAVAILABLE, "unavailable",
                        "the database is busy (another program holds its write lock); "
                        "try again shortly" if busy else
                        "the database is not reachable; try again shortly",
                        {"Retry-After": "5"})
    log.exception("unhandled error on %s %s", request.method, request.url.path,
                  extra=_fields(request))
    return _respond(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error",
                    "internal error; see the server log")
