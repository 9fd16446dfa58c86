"""What the admin routes depend on: the two secrets as FastAPI security dependencies, the
command publisher, and the collaborators every router of the package is built with.

Admin: ``X-DF-ADMIN-SECRET`` or ``Authorization: Bearer``, compared in constant time with
every value of ``DF_ADMIN_SECRET``. Jobs: ``X-DF-JOBS-SECRET`` or ``Authorization: Bearer``
against ``X_DF_JOBS_SECRET``. Both places are FastAPI security schemes, so the OpenAPI document
declares them on every guarded operation (``AdminSecret``/``AdminBearer``,
``JobsSecret``/``JobsBearer``: either one of a pair). Missing or wrong → 401 JSON; after
``ADMIN_RATE_LIMIT_MAX`` failures from one address in 15 minutes every attempt from it is 429
until the oldest failure is 15 minutes old, the right secret too (otherwise guessing would
simply go on between the refusals). Once the secret is right, a query parameter given more than
once is 422 (no guarded route takes a list in its query; Starlette would keep the last value
and answer as if the first had never been sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.signing import secret_matches
from services.ingress.limits import SlidingWindow, client_address

__all__ = [
    "AdminDeps",
    "BearerSecret",
    "CommandPublisher",
    "Throttled",
    "Unauthorized",
    "admin_guard",
    "jobs_guard",
    "queue_command",
    "throttled_response",
    "unauthorized_response",
]

log = get_logger(__name__)


class CommandPublisher(Protocol):
    """What the admin routes need from the ingress's NATS side."""

    async def publish_command(self, subject: str, body: bytes, msg_id: str) -> bool: ...


class Unauthorized(Exception):
    """401 with a reason; answered as JSON by the app's handler."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Throttled(Exception):
    """429: too many failed attempts from this address; try again after ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def throttled_response(_: Request, exc: Exception) -> JSONResponse:
    retry_after = exc.retry_after if isinstance(exc, Throttled) else 60
    return JSONResponse(
        {"error": "Too Many Requests", "reason": "too many failed attempts"},
        status_code=429,
        headers={"Retry-After": str(retry_after)},
    )


def unauthorized_response(_: Request, exc: Exception) -> JSONResponse:
    reason = exc.reason if isinstance(exc, Unauthorized) else "unauthorized"
    return JSONResponse(
        {"error": "Unauthorized", "reason": reason}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


class BearerSecret(HTTPBearer):
    """``Authorization: Bearer <secret>`` read as this API always has: what follows the first
    seven characters, trimmed, so an empty token is a wrong secret rather than a missing one
    (FastAPI's own ``HTTPBearer`` would call it missing). Never raises: the guard answers."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        return HTTPAuthorizationCredentials(scheme=auth[:6], credentials=auth[7:].strip())


def _guard(secrets: Sequence[SecretStr], header: str, realm: str, variable: str, failures: SlidingWindow) -> Any:
    """The dependency that checks one secret: in ``header``, else as a bearer token."""
    title = realm.capitalize()
    in_header = APIKeyHeader(
        name=header,
        scheme_name=f"{title}Secret",
        auto_error=False,
        description=f"{variable} (any of its comma-separated values)",
    )
    as_bearer = BearerSecret(
        scheme_name=f"{title}Bearer", auto_error=False, description=f"{variable} as a bearer token, instead of {header}"
    )

    from_header, from_bearer = Security(in_header), Security(as_bearer)

    async def check(
        request: Request,
        header_value: str | None = from_header,
        bearer: HTTPAuthorizationCredentials | None = from_bearer,
    ) -> str:
        address = client_address(request)
        retry_after = failures.retry_after(address)
        if retry_after is not None:
            log.warning("unauthorized_throttled", realm=realm, path=request.url.path)
            raise Throttled(retry_after)
        given = header_value.strip() if header_value else bearer.credentials if bearer else None
        if not secrets or given is None or not secret_matches(given, secrets):
            failures.hit(address)
            log.warning(
                "unauthorized",
                realm=realm,
                path=request.url.path,
                reason="missing_credentials" if given is None else "bad_credentials",
            )
            raise Unauthorized("missing credentials" if given is None else "bad credentials")
        _each_query_parameter_once(request)
        return realm

    return check


def _each_query_parameter_once(request: Request) -> None:
    """422 (FastAPI's validation body) for every query parameter given more than once."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated_parameter",
                    "loc": ("query", name),
                    "msg": f"given {names.count(name)} times; give it once",
                    "input": request.query_params.getlist(name),
                }
                for name in repeated
            ]
        )


def admin_guard(settings: Settings, failures: SlidingWindow) -> Any:
    """The dependency of a route for operators (``DF_ADMIN_SECRET``), counting failures in
    ``failures``."""
    return Depends(_guard(settings.df_admin_secret, "X-DF-ADMIN-SECRET", "admin", "DF_ADMIN_SECRET", failures))


def jobs_guard(settings: Settings, failures: SlidingWindow) -> Any:
    """The dependency of a jobs route (``X_DF_JOBS_SECRET``), counting failures in ``failures``."""
    return Depends(_guard(settings.x_df_jobs_secret, "X-DF-JOBS-SECRET", "jobs", "X_DF_JOBS_SECRET", failures))


@dataclass(frozen=True)
class AdminDeps:
    """What the routers are built with: one engine, one command publisher, and the two
    guards, which share one failure window per address (both secrets count in it)."""

    settings: Settings
    engine: AsyncEngine
    commands: CommandPublisher
    admin: Any  # Depends(...) of admin_guard
    jobs: Any  # Depends(...) of jobs_guard

    @classmethod
    def build(
        cls, settings: Settings, engine: AsyncEngine, commands: CommandPublisher, failures: SlidingWindow
    ) -> AdminDeps:
        return cls(settings, engine, commands, admin_guard(settings, failures), jobs_guard(settings, failures))

    def vendors_configured(self) -> bool:
        """GHL and Aloware credentials both set (the call-list actions need both)."""
        s = self.settings
        return bool(s.ghl_api_key and s.ghl_location_id and s.aloware_api_token)


async def queue_command(
    commands: CommandPublisher, subject: str, command: BaseModel, msg_id: str, what: str
) -> JSONResponse | None:
    """Put ``command`` on the JOBS stream; None when it is there, else the 503 to answer."""
    if await commands.publish_command(subject, command.model_dump_json().encode(), msg_id):
        return None
    return JSONResponse(
        {"success": False, "error": f"cannot queue the {what} now (NATS unavailable)"},
        status_code=503,
        headers={"Retry-After": "5"},
    )
