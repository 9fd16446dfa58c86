"""Events for operators (spec/inbound.md §4.5): list and show them, the outbox rows the stream
refused, and the three actions (mark done, quarantine, replay). State changes go through
``services.tooling.operations``; a replay is queued on the JOBS stream for the jobs service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator
from sqlalchemy import select

from contracts.subjects import REPLAY_SUBJECT
from services.infra.db.models import TableName, TextingWebhookEventRow
from services.infra.logging import get_logger
from services.ingress.admin.deps import AdminDeps, queue_command
from services.ingress.admin.responses import GUARDED, errors, fail
from services.tooling.operations import (
    EventFilter,
    OperationError,
    failed_outbox_rows,
    list_events,
    mark_done,
    mask_number,
    parse_event_id,
    quarantine,
    replay_command,
    replay_msg_id,
    show_event,
)

__all__ = ["IsoDateTime", "QuarantineBody", "ReplayBody", "events_router"]

log = get_logger(__name__)


class QuarantineBody(BaseModel):
    reason: str = "Manual quarantine"
    eventSource: TableName | None = None
    quarantinedBy: str | None = None


class ReplayBody(BaseModel):
    eventSource: TableName | None = None
    force: bool = False
    requestedBy: str | None = None


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


def _digits(value: object) -> object:
    """A count in a query is digits: pydantic's lax int also takes ``5.0`` (schemathesis found
    ``limit=5.0`` answered 200 where the document says integer)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("expected a whole number of digits")
    return value


Digits = BeforeValidator(_digits)


def events_router(deps: AdminDeps) -> APIRouter:
    """``/api/admin/events…``, ``/api/admin/texting/events`` and ``/api/admin/outbox/failed``."""
    engine, admin = deps.engine, deps.admin
    router = APIRouter(responses=GUARDED)

    @router.get(
        "/api/admin/events", dependencies=[admin], summary="list events (cursor pagination)", responses=errors(422)
    )
    async def list_admin_events(
        source: str | None = None,
        status: str | None = None,
        eventType: str | None = None,
        entityType: str | None = None,
        entityId: str | None = None,
        table: TableName = "webhook",
        receivedFrom: IsoDateTime | None = None,
        receivedTo: IsoDateTime | None = None,
        order: Literal["asc", "desc"] = "asc",
        limit: Annotated[int, Query(ge=1, le=500), Digits] = 50,
        cursor: str | None = None,
        includePayload: Literal["redacted", "raw"] = "redacted",
    ) -> JSONResponse:
        f = EventFilter(
            table=table,
            source=source,
            status=status,
            event_type=eventType,
            entity_type=entityType,
            entity_id=entityId,
            received_from=receivedFrom,
            received_to=receivedTo,
            order=order,
            limit=limit,
            cursor=cursor,
        )
        raw = includePayload == "raw"
        try:
            events, next_cursor = await list_events(engine, f, raw_payload=raw)
        except OperationError as exc:
            return fail(exc)
        if raw:
            log.warning("admin_raw_payload_access", table=table, count=len(events))
        return JSONResponse({"events": events, "count": len(events), "nextCursor": next_cursor})

    @router.get(
        "/api/admin/texting/events", dependencies=[admin], summary="texting events (masked)", responses=errors(422)
    )
    async def list_texting_events(
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500), Digits] = 50,
        includeBody: bool = False,
        cursor: str | None = None,
    ) -> JSONResponse:
        f = EventFilter(table="texting", status=status, limit=limit, cursor=cursor)
        try:
            events, next_cursor = await list_events(engine, f, raw_payload=True)
        except OperationError as exc:
            return fail(exc)
        model = TextingWebhookEventRow
        ids = [uuid.UUID(e["id"]) for e in events]
        async with engine.connect() as conn:
            numbers = {
                r.id: r
                for r in (
                    await conn.execute(select(model.id, model.from_number, model.to_number).where(model.id.in_(ids)))
                ).all()
            }
        shaped = []
        for e in events:
            row = numbers.get(uuid.UUID(e["id"]))
            item = {
                "id": e["id"],
                "receivedAt": e["receivedAt"],
                "eventType": e["eventType"],
                "entityId": e["entityId"],
                "status": e["status"],
                "errorMessage": e["errorMessage"],
                "fromNumber": mask_number(row.from_number if row else None),
                "toNumber": mask_number(row.to_number if row else None),
            }
            if includeBody:
                body = e["payload"].get("body") if isinstance(e["payload"], dict) else None
                item["body"] = body
            shaped.append(item)
        if includeBody:
            log.warning("admin_message_body_access", count=len(shaped))
        return JSONResponse({"events": shaped, "count": len(shaped), "nextCursor": next_cursor})

    @router.get(
        "/api/admin/events/{event_id}",
        dependencies=[admin],
        summary="one event, its deliveries and sync_log",
        responses=errors(404, 422),
    )
    async def get_event(
        event_id: str, eventSource: TableName | None = None, includePayload: Literal["redacted", "raw"] = "redacted"
    ) -> JSONResponse:
        try:
            detail = await show_event(
                engine, parse_event_id(event_id), eventSource, raw_payload=includePayload == "raw"
            )
        except OperationError as exc:
            return fail(exc)
        if includePayload == "raw":
            log.warning("admin_raw_payload_access", event_id=event_id)
        return JSONResponse(detail)

    @router.get(
        "/api/admin/outbox/failed",
        dependencies=[admin],
        summary="accepted events the stream refused (set aside by the outbox drain)",
    )
    async def get_failed_outbox(limit: Annotated[int, Query(ge=1, le=500), Digits] = 100) -> JSONResponse:
        rows = await failed_outbox_rows(engine, limit)
        return JSONResponse({"rows": rows, "count": len(rows)})

    @router.post("/api/admin/events/{event_id}/mark-done", dependencies=[admin], responses=errors(404, 409, 422))
    async def post_mark_done(event_id: str) -> JSONResponse:
        try:
            ident = parse_event_id(event_id)
            await mark_done(engine, ident, by="admin-api")
        except OperationError as exc:
            return fail(exc)
        log.info("admin_mark_done", event_id=event_id)
        return JSONResponse({"success": True, "message": "Event marked as done", "eventId": event_id})

    @router.post("/api/admin/events/{event_id}/quarantine", dependencies=[admin], responses=errors(400, 404, 409, 422))
    async def post_quarantine(event_id: str, body: Annotated[QuarantineBody | None, Body()] = None) -> JSONResponse:
        body = body or QuarantineBody()
        try:
            await quarantine(
                engine, parse_event_id(event_id), reason=body.reason, by=body.quarantinedBy, source=body.eventSource
            )
        except OperationError as exc:
            return fail(exc)
        log.info("admin_quarantine", event_id=event_id, reason=body.reason)
        return JSONResponse({"success": True, "message": "Event quarantined", "eventId": event_id})

    @router.post("/api/admin/events/{event_id}/replay", dependencies=[admin], responses=errors(400, 404, 409, 422, 503))
    async def post_replay(
        event_id: str,
        body: Annotated[ReplayBody | None, Body()] = None,
        eventSource: TableName | None = None,
        force: bool = False,
    ) -> JSONResponse:
        body = body or ReplayBody()
        source, force = body.eventSource or eventSource, body.force or force
        try:  # the same checks and command as the console's replay (operations.replay_command)
            command = await replay_command(
                engine,
                parse_event_id(event_id),
                table=source,
                force=force,
                requested_by=body.requestedBy or "admin-api",
            )
        except OperationError as exc:
            return fail(exc)
        failed = await queue_command(deps.commands, REPLAY_SUBJECT, command, replay_msg_id(command), "replay")
        if failed is not None:
            return failed
        log.info("admin_replay_queued", event_id=event_id, command_id=str(command.command_id), force=force)
        return JSONResponse(
            {"success": True, "message": "Event replayed", "eventId": event_id, "commandId": str(command.command_id)}
        )

    return router
