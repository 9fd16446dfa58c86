"""The admin API's error answers: their bodies, how the OpenAPI document describes them, and
the two every router gives (an operation refused, vendors not configured)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.tooling.operations import OperationError

__all__ = ["ERRORS", "GUARDED", "ErrorBody", "errors", "fail", "unconfigured"]


class ErrorBody(BaseModel):
    """The body of every admin error but 401."""

    success: Literal[False]
    error: str


class UnauthorizedBody(BaseModel):
    error: Literal["Unauthorized"]
    reason: str


class ThrottledBody(BaseModel):
    error: Literal["Too Many Requests"]
    reason: str


GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": UnauthorizedBody, "description": "missing or bad credentials"},
    429: {"model": ThrottledBody, "description": "too many failed attempts from this address; see Retry-After"},
}


class ValidationErrors(BaseModel):
    """FastAPI's answer to a request its parameters do not validate."""

    detail: list[dict[str, Any]]


class Detail(BaseModel):
    """FastAPI's answer to a body that is not JSON."""

    detail: str


ERRORS: dict[int, str] = {
    400: "the body is not JSON",
    404: "no such event or list",
    409: "the event's state does not allow it",
    422: "invalid parameters or cursor",
    502: "a vendor call failed",
    503: "not possible now (NATS unavailable, vendors not configured); see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer besides 401."""
    models: dict[int, Any] = {400: Detail, 422: ErrorBody | ValidationErrors}
    return {code: {"model": models.get(code, ErrorBody), "description": ERRORS[code]} for code in codes}


def fail(exc: OperationError) -> JSONResponse:
    """An operation refused (services.tooling.operations), with its status and message."""
    return JSONResponse({"success": False, "error": exc.message}, status_code=exc.status)


def unconfigured() -> JSONResponse:
    return JSONResponse({"success": False, "error": "GHL and Aloware credentials are not configured"}, status_code=503)
