"""Operator endpoints on the ingress (ARCHITECTURE.md §5; spec/inbound.md §4.5, §4.6).

Admin: ``X-DF-ADMIN-SECRET`` or ``Authorization: Bearer``, compared in constant time with
every value of ``DF_ADMIN_SECRET``. Jobs: ``X-DF-JOBS-SECRET`` or ``Authorization: Bearer``
against ``X_DF_JOBS_SECRET``. Missing or wrong → 401 JSON; after ``ADMIN_RATE_LIMIT_MAX``
failures from one address in 15 minutes every attempt from it is 429 until the oldest failure
is 15 minutes old, the right secret too (otherwise guessing would simply go on between the
refusals). Both places are FastAPI security schemes, so the OpenAPI document declares them on
every guarded operation (``AdminSecret`` or ``AdminBearer``, ``JobsSecret`` or ``JobsBearer``).
State changes are done through
``services.tooling.operations``; work that takes time (replays, sweeps) is queued on the JOBS
stream for the jobs service and answered at once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Body, Depends, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from contracts.commands import ReplayRequested, SweepRequested
from contracts.subjects import REPLAY_SUBJECT, SWEEP_SUBJECT
from services.infra.db.models import EVENT_TABLES
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.signing import secret_matches
from services.ingress.limits import SlidingWindow, client_address
from services.tooling.operations import (
    EventFilter,
    OperationError,
    TableName,
    failed_outbox_rows,
    find_event,
    list_events,
    mark_done,
    mask_number,
    no_nul,
    parse_event_id,
    quarantine,
    show_event,
)

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
    return JSONResponse({"error": "Too Many Requests", "reason": "too many failed attempts"}, status_code=429,
                        headers={"Retry-After": str(retry_after)})


def unauthorized_response(_: Request, exc: Exception) -> JSONResponse:
    reason = exc.reason if isinstance(exc, Unauthorized) else "unauthorized"
    return JSONResponse({"error": "Unauthorized", "reason": reason}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


class BearerSecret(HTTPBearer):
    """``Authorization: Bearer <secret>`` read as this API always has: what follows the first
    seven characters, trimmed, so an empty token is a wrong secret rather than a missing one
    (FastAPI's own ``HTTPBearer`` would call it missing). Never raises: the guard answers."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        return HTTPAuthorizationCredentials(scheme=auth[:6], credentials=auth[7:].strip())


def _guard(secrets: Sequence[SecretStr], header: str, realm: str, variable: str,
           failures: SlidingWindow) -> Any:
    """The dependency that checks one secret: in ``header``, else as a bearer token."""
    title = realm.capitalize()
    in_header = APIKeyHeader(name=header, scheme_name=f"{title}Secret", auto_error=False,
                             description=f"{variable} (any of its comma-separated values)")
    as_bearer = BearerSecret(scheme_name=f"{title}Bearer", auto_error=False,
                             description=f"{variable} as a bearer token, instead of {header}")
    from_header, from_bearer = Security(in_header), Security(as_bearer)

    async def check(request: Request, header_value: str | None = from_header,
                    bearer: HTTPAuthorizationCredentials | None = from_bearer) -> str:
        address = client_address(request)
        retry_after = failures.retry_after(address)
        if retry_after is not None:
            log.warning("unauthorized_throttled", realm=realm, path=request.url.path)
            raise Throttled(retry_after)
        given = header_value.strip() if header_value else bearer.credentials if bearer else None
        if not secrets or given is None or not secret_matches(given, secrets):
            failures.hit(address)
            log.warning("unauthorized", realm=realm, path=request.url.path,
                        reason="missing_credentials" if given is None else "bad_credentials")
            raise Unauthorized("missing credentials" if given is None else "bad credentials")
        return realm
    return check


def _unconfigured() -> JSONResponse:
    return JSONResponse({"success": False, "error": "GHL and Aloware credentials are not configured"},
                        status_code=503)


def _fail(exc: OperationError) -> JSONResponse:
    return JSONResponse({"success": False, "error": exc.message}, status_code=exc.status)


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
    400: "the body is not JSON", 404: "no such event or list", 409: "the event's state does not allow it",
    422: "invalid parameters or cursor", 502: "a vendor call failed",
    503: "not possible now (NATS unavailable, vendors not configured); see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer besides 401."""
    models: dict[int, Any] = {400: Detail, 422: ErrorBody | ValidationErrors}
    return {code: {"model": models.get(code, ErrorBody), "description": ERRORS[code]} for code in codes}


class QuarantineBody(BaseModel):
    reason: str = "Manual quarantine"
    eventSource: TableName | None = None  # noqa: N815 - the API's field name
    quarantinedBy: str | None = None  # noqa: N815


class ReplayBody(BaseModel):
    eventSource: TableName | None = None  # noqa: N815
    force: bool = False
    requestedBy: str | None = None  # noqa: N815


def _not_a_number(value: Any) -> Any:
    """Query date-times are ISO 8601 as documented; pydantic alone would also read "0.0" as
    a Unix timestamp (found by schemathesis)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("expected an ISO 8601 date-time, not a number")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_not_a_number)]


def admin_guard(settings: Settings, failures: SlidingWindow) -> Any:
    """The dependency of a route for operators (``DF_ADMIN_SECRET``), counting failures in
    ``failures``."""
    return Depends(_guard(settings.df_admin_secret, "X-DF-ADMIN-SECRET", "admin", "DF_ADMIN_SECRET", failures))


def admin_router(settings: Settings, engine: AsyncEngine, commands: CommandPublisher,
                 failures: SlidingWindow | None = None) -> APIRouter:
    """The admin and jobs routes, bound to one engine and one command publisher; failed
    attempts of both secrets count in ``failures`` (per address, ``ADMIN_RATE_LIMIT_MAX``)."""
    failures = failures or SlidingWindow(settings.admin_rate_limit_max)
    admin = admin_guard(settings, failures)
    jobs = Depends(_guard(settings.x_df_jobs_secret, "X-DF-JOBS-SECRET", "jobs", "X_DF_JOBS_SECRET", failures))
    def vendors_configured() -> bool:
        return bool(settings.ghl_api_key and settings.ghl_location_id and settings.aloware_api_token)

    @asynccontextmanager
    async def vendor_clients() -> AsyncIterator[tuple[Any, Any]]:
        """GHL and Aloware clients for one admin action, closed after it."""
        from services.clients.aloware import AlowareClient
        from services.clients.ghl import GhlClient

        ghl, alo = GhlClient.from_settings(settings), AlowareClient.from_settings(settings)
        try:
            yield ghl, alo
        finally:
            await ghl.aclose()
            await alo.aclose()

    router = APIRouter(responses=GUARDED)

    @router.get("/api/admin/events", dependencies=[admin], summary="list events (cursor pagination)",
                responses=errors(422))
    async def list_admin_events(
        source: str | None = None, status: str | None = None,
        eventType: str | None = None, entityType: str | None = None,  # noqa: N803
        entityId: str | None = None, table: TableName = "webhook",  # noqa: N803
        receivedFrom: IsoDateTime | None = None, receivedTo: IsoDateTime | None = None,  # noqa: N803
        order: Literal["asc", "desc"] = "asc",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
        includePayload: Literal["redacted", "raw"] = "redacted",  # noqa: N803
    ) -> JSONResponse:
        f = EventFilter(table=table, source=source, status=status, event_type=eventType,
                        entity_type=entityType, entity_id=entityId, received_from=receivedFrom,
                        received_to=receivedTo, order=order, limit=limit, cursor=cursor)
        raw = includePayload == "raw"
        try:
            events, next_cursor = await list_events(engine, f, raw_payload=raw)
        except OperationError as exc:
            return _fail(exc)
        if raw:
            log.warning("admin_raw_payload_access", table=table, count=len(events))
        return JSONResponse({"events": events, "count": len(events), "nextCursor": next_cursor})

    @router.get("/api/admin/texting/events", dependencies=[admin], summary="texting events (masked)",
                responses=errors(422))
    async def list_texting_events(
        status: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
        includeBody: bool = False, cursor: str | None = None,  # noqa: N803
    ) -> JSONResponse:
        f = EventFilter(table="texting", status=status, limit=limit, cursor=cursor)
        try:
            events, next_cursor = await list_events(engine, f, raw_payload=True)
        except OperationError as exc:
            return _fail(exc)
        model = EVENT_TABLES["texting"]
        ids = [uuid.UUID(e["id"]) for e in events]
        async with engine.connect() as conn:
            numbers = {r.id: r for r in (await conn.execute(
                select(model.id, model.from_number, model.to_number).where(model.id.in_(ids)))).all()}
        shaped = []
        for e in events:
            row = numbers.get(uuid.UUID(e["id"]))
            item = {"id": e["id"], "receivedAt": e["receivedAt"], "eventType": e["eventType"],
                    "entityId": e["entityId"], "status": e["status"], "errorMessage": e["errorMessage"],
                    "fromNumber": mask_number(row.from_number if row else None),
                    "toNumber": mask_number(row.to_number if row else None)}
            if includeBody:
                body = e["payload"].get("body") if isinstance(e["payload"], dict) else None
                item["body"] = body
            shaped.append(item)
        if includeBody:
            log.warning("admin_message_body_access", count=len(shaped))
        return JSONResponse({"events": shaped, "count": len(shaped), "nextCursor": next_cursor})

    @router.get("/api/admin/events/{event_id}", dependencies=[admin], summary="one event, its deliveries and sync_log",
                responses=errors(404, 422))
    async def get_event(event_id: str, eventSource: TableName | None = None,  # noqa: N803
                        includePayload: Literal["redacted", "raw"] = "redacted") -> JSONResponse:  # noqa: N803
        try:
            detail = await show_event(engine, parse_event_id(event_id), eventSource,
                                      raw_payload=includePayload == "raw")
        except OperationError as exc:
            return _fail(exc)
        if includePayload == "raw":
            log.warning("admin_raw_payload_access", event_id=event_id)
        return JSONResponse(detail)

    @router.get("/api/admin/outbox/failed", dependencies=[admin],
                summary="accepted events the stream refused (set aside by the outbox drain)")
    async def get_failed_outbox(limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JSONResponse:
        rows = await failed_outbox_rows(engine, limit)
        return JSONResponse({"rows": rows, "count": len(rows)})

    @router.post("/api/admin/events/{event_id}/mark-done", dependencies=[admin], responses=errors(404, 409, 422))
    async def post_mark_done(event_id: str) -> JSONResponse:
        try:
            ident = parse_event_id(event_id)
            await mark_done(engine, ident, by="admin-api")
        except OperationError as exc:
            return _fail(exc)
        log.info("admin_mark_done", event_id=event_id)
        return JSONResponse({"success": True, "message": "Event marked as done", "eventId": event_id})

    @router.post("/api/admin/events/{event_id}/quarantine", dependencies=[admin],
                 responses=errors(400, 404, 409, 422))
    async def post_quarantine(event_id: str, body: Annotated[QuarantineBody | None, Body()] = None) -> JSONResponse:
        body = body or QuarantineBody()
        try:
            await quarantine(engine, parse_event_id(event_id), reason=body.reason, by=body.quarantinedBy,
                             source=body.eventSource)
        except OperationError as exc:
            return _fail(exc)
        log.info("admin_quarantine", event_id=event_id, reason=body.reason)
        return JSONResponse({"success": True, "message": "Event quarantined", "eventId": event_id})

    @router.post("/api/admin/events/{event_id}/replay", dependencies=[admin],
                 responses=errors(400, 404, 409, 422, 503))
    async def post_replay(event_id: str, body: Annotated[ReplayBody | None, Body()] = None,
                          eventSource: TableName | None = None, force: bool = False) -> JSONResponse:  # noqa: N803
        body = body or ReplayBody()
        source, force = body.eventSource or eventSource, body.force or force
        try:
            ident = parse_event_id(event_id)
            async with engine.connect() as conn:
                table, row = await find_event(conn, ident, source)
            if row.status == "quarantined" and not force:
                raise OperationError(409, "event is quarantined; replay with force=true to release it")
            if row.status == "processing":
                raise OperationError(409, "event is being processed; replay it when it ends")
        except OperationError as exc:
            return _fail(exc)
        command = ReplayRequested(event_ids=[ident], event_table=table, force=force,
                                  requested_by=body.requestedBy or "admin-api")
        if not await commands.publish_command(REPLAY_SUBJECT, command.model_dump_json().encode(),
                                              f"replay:{command.command_id}"):
            return JSONResponse({"success": False, "error": "cannot queue the replay now (NATS unavailable)"},
                                status_code=503, headers={"Retry-After": "5"})
        log.info("admin_replay_queued", event_id=event_id, command_id=str(command.command_id), force=force)
        return JSONResponse({"success": True, "message": "Event replayed", "eventId": event_id,
                             "commandId": str(command.command_id)})

    @router.post("/api/admin/agents/seed", dependencies=[admin], summary="seed the agent directory (L-6)",
                 responses=errors(502, 503))
    async def post_agents_seed() -> JSONResponse:
        from services.tooling.agents import seed_agents

        if not vendors_configured():
            return _unconfigured()
        async with vendor_clients() as (ghl, alo):
            try:
                inserted = await seed_agents(engine, await ghl.list_users(), await alo.list_users())
            except Exception as exc:  # a vendor failure is reported, not a 500
                log.warning("agents_seed_failed", error=str(exc))
                return JSONResponse({"success": False, "error": f"seed failed: {exc}"}, status_code=502)
        return JSONResponse({"success": True, "inserted": inserted})

    @router.post("/api/admin/lists/rebuild", dependencies=[admin], summary="rebuild agent call lists (L-5)",
                 responses=errors(404, 422, 502, 503))
    async def post_lists_rebuild(agentKey: str | None = None, listKey: str | None = None) -> JSONResponse:  # noqa: N803
        from services.tooling.call_lists_rebuild import UnknownList, rebuild_lists

        if not vendors_configured():
            return _unconfigured()
        try:
            no_nul(agentKey=agentKey, listKey=listKey)
        except OperationError as exc:
            return _fail(exc)
        async with vendor_clients() as (ghl, alo):
            try:
                report = await rebuild_lists(settings, engine, ghl, alo, agentKey, listKey)
            except UnknownList as exc:
                return JSONResponse({"success": False, "error": str(exc)}, status_code=404)
            except Exception as exc:  # a vendor failure is reported, not a 500
                log.warning("lists_rebuild_failed", error=str(exc))
                return JSONResponse({"success": False, "error": f"rebuild failed: {exc}"}, status_code=502)
        log.info("admin_lists_rebuilt", rebuilt=report.rebuilt, removed=report.removed, errors=len(report.errors))
        return JSONResponse({"rebuilt": report.rebuilt, "removed": report.removed, "errors": report.errors,
                             "message": f"Rebuilt {report.rebuilt} list(s)"})

    async def queue_sweep(command: SweepRequested) -> JSONResponse | None:
        if not await commands.publish_command(SWEEP_SUBJECT, command.model_dump_json().encode(),
                                              f"sweep:manual:{command.command_id}"):
            return JSONResponse({"success": False, "error": "cannot queue the sweep now (NATS unavailable)"},
                                status_code=503, headers={"Retry-After": "5"})
        return None

    async def process_pending() -> JSONResponse:
        command = SweepRequested(requested_by="jobs-api")
        failed = await queue_sweep(command)
        if failed is not None:
            return failed
        log.info("sweep_queued", sweep_id=str(command.command_id))
        return JSONResponse({"success": True, "status": "queued", "sweepId": str(command.command_id)},
                            status_code=202)

    for method in ("POST", "GET"):  # GET kept for the original's cron
        router.add_api_route("/api/jobs/process-pending", process_pending, methods=[method],
                             dependencies=[jobs], summary="run the pending sweep now", status_code=202, responses=errors(503),
                             operation_id=f"process_pending_{method.lower()}")

    async def enqueue(table: TableName) -> JSONResponse:
        model = EVENT_TABLES[table]
        async with engine.connect() as conn:
            total = int(await conn.scalar(select(func.count()).select_from(model)
                                          .where(model.status == "pending")) or 0)
        command = SweepRequested(requested_by="jobs-api", ignore_min_age=True, tables=(table,), steps=("S1",))
        failed = await queue_sweep(command)
        if failed is not None:
            return failed
        return JSONResponse({"enqueued": min(total, settings.jobs_batch_size), "totalPending": total,
                             "sweepId": str(command.command_id)})

    @router.post("/api/jobs/enqueue-pending", dependencies=[jobs], summary="re-drive pending webhook events now",
                 responses=errors(503))
    async def enqueue_pending() -> JSONResponse:
        return await enqueue("webhook")

    @router.post("/api/jobs/enqueue-texting-pending", dependencies=[jobs],
                 summary="re-drive pending texting events now", responses=errors(503))
    async def enqueue_texting_pending() -> JSONResponse:
        return await enqueue("texting")

    return router
