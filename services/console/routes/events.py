"""Events: the list with the admin API's filters, an event's page and timeline, the payload
reveal, and the actions (replay after its dry run, quarantine, release, mark done).

Everything goes through ``services.tooling.operations`` like the admin API and ``dfm events``;
replays are queued for the jobs service as the admin API queues them, dry run first: the page
shows the report the jobs service records for the dry-run command, then asks to confirm."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console.web import Acting, Console, Operator, console_of
from services.infra.db.models import TABLE_NAMES, TableName
from services.infra.logging import get_logger
from services.tooling.operations import (
    EventFilter,
    OperationError,
    list_events,
    mark_done,
    parse_event_id,
    quarantine,
    replay_command,
    replay_report,
    show_event,
)

router = APIRouter()
log = get_logger(__name__)
PAGE = 50
STATUSES = ("pending", "processing", "done", "error", "dead", "quarantined")
SOURCES = ("ghl", "ghl_provider", "aloware")
POLL_S = 1


def requested_by(operator: str) -> str:
    return f"console:{operator}"


def _time(value: str | None) -> datetime | None:
    """A ``datetime-local`` input (read as UTC) or an ISO time; None when empty."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise OperationError(422, f"not a time: {value!r} (expected 2026-01-31T14:00)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_filter(params: dict[str, str], *, limit: int = PAGE, cursor: str | None = None) -> EventFilter:
    """The list's filters from query or form fields (the admin API's, plus a search on ids)."""
    table = params.get("table") or "webhook"
    if table not in TABLE_NAMES:
        raise OperationError(422, "table must be webhook, texting or broadcast")
    return EventFilter(
        table=table,
        source=params.get("source") or None,
        status=params.get("status") or None,
        event_type=params.get("type") or None,
        entity_type=params.get("entity_type") or None,
        entity_id=params.get("entity_id") or None,
        search=params.get("q") or None,
        received_from=_time(params.get("since")),
        received_to=_time(params.get("until")),
        order="desc",
        limit=limit,
        cursor=cursor,
    )


FILTER_FIELDS = ("table", "source", "status", "type", "entity_type", "entity_id", "q", "since", "until")


def failure(console: Console, request: Request, session: Any, exc: OperationError) -> HTMLResponse:
    return console.page(
        request, "error.html", {"message": exc.message, "status": exc.status}, status_code=exc.status, session=session
    )


@router.get("/events", response_class=HTMLResponse)
async def events_page(request: Request, session: Operator) -> HTMLResponse:
    console = console_of(request)
    params = {k: v for k, v in request.query_params.items() if k in FILTER_FIELDS and v}
    try:
        events, next_cursor = await list_events(
            console.engine, event_filter(params, cursor=request.query_params.get("cursor") or None)
        )
    except OperationError as exc:
        return failure(console, request, session, exc)
    return console.page(
        request,
        "events.html",
        {
            "events": events,
            "next_cursor": next_cursor,
            "filters": params,
            "statuses": STATUSES,
            "sources": SOURCES,
            "tables": TABLE_NAMES,
        },
        session=session,
    )


def _table(value: str | None) -> TableName | None:
    return value if value in TABLE_NAMES else None  # type: ignore[return-value]


@router.get("/events/{event_id}", response_class=HTMLResponse)
async def event_page(request: Request, session: Operator, event_id: str, table: str | None = None) -> HTMLResponse:
    from services.console.timeline import timeline

    console = console_of(request)
    try:
        detail = await show_event(console.engine, parse_event_id(event_id), _table(table))
    except OperationError as exc:
        return failure(console, request, session, exc)
    return console.page(request, "event.html", {"e": detail, "timeline": timeline(detail)}, session=session)


@router.post("/events/{event_id}/reveal", response_class=HTMLResponse)
async def reveal(request: Request, session: Acting, event_id: str) -> HTMLResponse:
    """The raw payload, personal fields and all: audited before it is sent."""
    console = console_of(request)
    try:
        detail = await show_event(console.engine, parse_event_id(event_id), raw_payload=True)
    except OperationError as exc:
        return failure(console, request, session, exc)
    await console.audit.record(
        session.operator,
        "reveal_payload",
        target=f"event:{detail['id']}",
        detail={"table": detail["table"]},
        client=console.client(request),
    )
    log.warning("console_raw_payload_access", operator=session.operator, event_id=detail["id"])
    return console.page(request, "_payload.html", {"payload": detail["payload"], "revealed": True}, session=session)


@router.post("/events/{event_id}/replay/preview", response_class=HTMLResponse)
async def replay_preview(
    request: Request, session: Acting, event_id: str, force: Annotated[bool, Form()] = False
) -> HTMLResponse:
    """Queue the dry run; the fragment polls for its report."""
    console = console_of(request)
    try:
        command = await replay_command(
            console.engine,
            parse_event_id(event_id),
            force=force,
            dry_run=True,
            requested_by=requested_by(session.operator),
        )
    except OperationError as exc:
        return console.page(
            request, "_notice.html", {"message": exc.message, "level": "error"}, status_code=exc.status, session=session
        )
    if not await console.bus.replay(command):
        return console.page(
            request,
            "_notice.html",
            {"message": "cannot queue the dry run now (NATS unavailable)", "level": "error"},
            status_code=503,
            session=session,
        )
    await console.audit.record(
        session.operator,
        "replay_preview",
        target=f"event:{event_id}",
        detail={"commandId": str(command.command_id), "force": force},
        client=console.client(request),
    )
    return console.page(
        request,
        "_command.html",
        {
            "command_id": command.command_id,
            "event_id": event_id,
            "force": force,
            "mode": "preview",
            "report": None,
            "poll_s": POLL_S,
        },
        session=session,
    )


@router.post("/events/{event_id}/replay", response_class=HTMLResponse)
async def replay(
    request: Request, session: Acting, event_id: str, force: Annotated[bool, Form()] = False
) -> HTMLResponse:
    """Queue the replay itself (after the operator read the dry run)."""
    console = console_of(request)
    try:
        ident = parse_event_id(event_id)
        before = await show_event(console.engine, ident)
        command = await replay_command(console.engine, ident, force=force, requested_by=requested_by(session.operator))
    except OperationError as exc:
        return console.page(
            request, "_notice.html", {"message": exc.message, "level": "error"}, status_code=exc.status, session=session
        )
    if not await console.bus.replay(command):
        return console.page(
            request,
            "_notice.html",
            {"message": "cannot queue the replay now (NATS unavailable)", "level": "error"},
            status_code=503,
            session=session,
        )
    action = "release" if before["status"] == "quarantined" else "replay"
    await console.audit.record(
        session.operator,
        action,
        target=f"event:{event_id}",
        detail={"commandId": str(command.command_id), "force": force, "statusBefore": before["status"]},
        client=console.client(request),
    )
    return console.page(
        request,
        "_command.html",
        {
            "command_id": command.command_id,
            "event_id": event_id,
            "force": force,
            "mode": "run",
            "report": None,
            "poll_s": POLL_S,
            "status": before["status"],
        },
        session=session,
    )


@router.get("/commands/{command_id}", response_class=HTMLResponse)
async def command_status(
    request: Request, session: Operator, command_id: uuid.UUID, event: str, mode: str = "preview", force: bool = False
) -> HTMLResponse:
    """A replay command's report once the jobs service recorded it; until then the fragment
    asks again every second. For a replay, also the event's status as it moves."""
    console = console_of(request)
    report = await replay_report(console.engine, command_id)
    status = None
    if mode == "run":
        try:
            status = (await show_event(console.engine, parse_event_id(event)))["status"]
        except OperationError as exc:
            return console.page(
                request,
                "_notice.html",
                {"message": exc.message, "level": "error"},
                status_code=exc.status,
                session=session,
            )
    return console.page(
        request,
        "_command.html",
        {
            "command_id": command_id,
            "event_id": event,
            "force": force,
            "mode": mode,
            "report": report,
            "poll_s": POLL_S,
            "status": status,
        },
        session=session,
    )


@router.post("/events/{event_id}/quarantine")
async def quarantine_event(
    request: Request, session: Acting, event_id: str, reason: Annotated[str, Form(min_length=1, max_length=500)]
) -> Response:
    console = console_of(request)
    try:
        await quarantine(
            console.engine,
            parse_event_id(event_id),
            reason=reason.strip() or "Manual quarantine",
            by=requested_by(session.operator),
        )
    except OperationError as exc:
        return failure(console, request, session, exc)
    await console.audit.record(
        session.operator,
        "quarantine",
        target=f"event:{event_id}",
        detail={"reason": reason},
        client=console.client(request),
    )
    return RedirectResponse(f"/events/{event_id}", status_code=303)


@router.post("/events/{event_id}/mark-done")
async def mark_event_done(request: Request, session: Acting, event_id: str) -> Response:
    console = console_of(request)
    try:
        await mark_done(console.engine, parse_event_id(event_id), by=requested_by(session.operator))
    except OperationError as exc:
        return failure(console, request, session, exc)
    await console.audit.record(
        session.operator, "mark_done", target=f"event:{event_id}", client=console.client(request)
    )
    return RedirectResponse(f"/events/{event_id}", status_code=303)
