"""Bulk replay by filter: select the events the list's filters match (newest first, at most
``BULK_MAX``), queue a dry run of them, show its count and a sample of its plans, and on
confirmation queue the replay and follow the events' statuses as they move. The selection is
kept in the audit row of the preview, so the confirmation replays exactly what was shown.
A contact's "reconcile now" uses the same path with that person's newest events."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from contracts.commands import ReplayRequested
from services.console.routes.events import FILTER_FIELDS, POLL_S, event_filter, failure, requested_by
from services.console.web import Acting, Console, Operator, console_of
from services.infra.db.models import EVENT_TABLES, TABLE_NAMES, TableName
from services.tooling.operations import OperationError, list_events, replay_report

router = APIRouter()
BULK_MAX = 1000
SAMPLE = 10
PREVIEW, RUN = "bulk_preview", "bulk_replay"


async def select_events(console: Console, params: dict[str, str]) -> tuple[list[str], bool]:
    """Ids the filters match, newest first, at most ``BULK_MAX``; and whether more matched."""
    ids: list[str] = []
    cursor: str | None = None
    while len(ids) < BULK_MAX:
        page, cursor = await list_events(console.engine, event_filter(params, limit=500, cursor=cursor))
        ids += [e["id"] for e in page]
        if cursor is None:
            return ids[:BULK_MAX], False
    return ids[:BULK_MAX], True


async def _queue_preview(
    console: Console, request: Request, session: Any, ids: list[str], table: TableName, origin: dict[str, Any]
) -> Response:
    if not ids:
        return failure(console, request, session, OperationError(404, "no events match these filters"))
    command = ReplayRequested(
        event_ids=[uuid.UUID(i) for i in ids],
        event_table=table,
        dry_run=True,
        requested_by=requested_by(session.operator),
    )
    if not await console.bus.replay(command):
        return failure(
            console, request, session, OperationError(503, "cannot queue the dry run now (NATS unavailable)")
        )
    await console.audit.record(
        session.operator,
        PREVIEW,
        target=f"command:{command.command_id}",
        detail={"eventIds": ids, "table": table, **origin},
        client=console.client(request),
    )
    return RedirectResponse(f"/bulk/{command.command_id}", status_code=303)


@router.post("/bulk/preview")
async def bulk_preview(request: Request, session: Acting) -> Response:
    console = console_of(request)
    form = await request.form()
    params = {k: str(v) for k, v in form.items() if k in FILTER_FIELDS and v}
    try:
        ids, more = await select_events(console, params)
    except OperationError as exc:
        return failure(console, request, session, exc)
    table: TableName = params.get("table", "webhook") if params.get("table") in TABLE_NAMES else "webhook"  # type: ignore[assignment]
    return await _queue_preview(console, request, session, ids, table, {"filters": params, "more": more})


@router.post("/contacts/reconcile")
async def contact_reconcile(
    request: Request, session: Acting, event_id: Annotated[list[str], Form()], contact: Annotated[str, Form()] = ""
) -> Response:
    """No jobs command reconciles one contact (``jobs.reconcile`` sweeps by batch): replaying
    the person's newest event from each side makes the rules compare both systems now."""
    console = console_of(request)
    try:
        ids = [str(uuid.UUID(i)) for i in event_id][:10]
    except ValueError:
        return failure(console, request, session, OperationError(422, "not an event id"))
    return await _queue_preview(console, request, session, ids, "webhook", {"contact": contact[:200]})


async def _selection(console: Console, action: str, command_id: uuid.UUID) -> dict[str, Any] | None:
    return await console.audit.find(action, f"command:{command_id}")


@router.get("/bulk/{command_id}", response_class=HTMLResponse)
async def bulk_page(request: Request, session: Operator, command_id: uuid.UUID) -> HTMLResponse:
    console = console_of(request)
    row = await _selection(console, PREVIEW, command_id)
    if row is None:
        return failure(console, request, session, OperationError(404, "no such bulk replay preview"))
    return console.page(
        request,
        "bulk.html",
        {
            "command_id": command_id,
            "selection": row,
            "count": len(row["detail"]["eventIds"]),
            "report": await replay_report(console.engine, command_id),
            "sample": SAMPLE,
            "poll_s": POLL_S,
            "bulk_max": BULK_MAX,
        },
        session=session,
    )


@router.get("/bulk/{command_id}/plan", response_class=HTMLResponse)
async def bulk_plan(request: Request, session: Operator, command_id: uuid.UUID) -> HTMLResponse:
    console = console_of(request)
    row = await _selection(console, PREVIEW, command_id)
    if row is None:
        return failure(console, request, session, OperationError(404, "no such bulk replay preview"))
    return console.page(
        request,
        "_bulk_plan.html",
        {
            "command_id": command_id,
            "count": len(row["detail"]["eventIds"]),
            "report": await replay_report(console.engine, command_id),
            "sample": SAMPLE,
            "poll_s": POLL_S,
        },
        session=session,
    )


@router.post("/bulk/{command_id}/confirm")
async def bulk_confirm(request: Request, session: Acting, command_id: uuid.UUID) -> Response:
    console = console_of(request)
    row = await _selection(console, PREVIEW, command_id)
    if row is None:
        return failure(console, request, session, OperationError(404, "no such bulk replay preview"))
    ids, table = row["detail"]["eventIds"], row["detail"].get("table", "webhook")
    command = ReplayRequested(
        event_ids=[uuid.UUID(i) for i in ids], event_table=table, requested_by=requested_by(session.operator)
    )
    if not await console.bus.replay(command):
        return failure(console, request, session, OperationError(503, "cannot queue the replay now (NATS unavailable)"))
    await console.audit.record(
        session.operator,
        RUN,
        target=f"command:{command.command_id}",
        detail={"eventIds": ids, "table": table, "preview": str(command_id)},
        client=console.client(request),
    )
    return RedirectResponse(f"/bulk/{command.command_id}/progress", status_code=303)


async def _progress(console: Console, command_id: uuid.UUID) -> dict[str, Any] | None:
    row = await _selection(console, RUN, command_id)
    if row is None:
        return None
    ids = [uuid.UUID(i) for i in row["detail"]["eventIds"]]
    model = EVENT_TABLES[row["detail"].get("table", "webhook")]
    async with console.engine.connect() as conn:
        counts = {
            r.status: int(r.n)
            for r in (
                await conn.execute(
                    select(model.status, func.count().label("n")).where(model.id.in_(ids)).group_by(model.status)
                )
            ).all()
        }
    report = await replay_report(console.engine, command_id)
    moving = counts.get("pending", 0) + counts.get("processing", 0)
    return {
        "command_id": command_id,
        "selection": row,
        "count": len(ids),
        "counts": counts,
        "report": report,
        "finished": report is not None and moving == 0,
        "poll_s": POLL_S,
    }


@router.get("/bulk/{command_id}/progress", response_class=HTMLResponse)
async def bulk_progress(request: Request, session: Operator, command_id: uuid.UUID) -> HTMLResponse:
    console = console_of(request)
    data = await _progress(console, command_id)
    if data is None:
        return failure(console, request, session, OperationError(404, "no such bulk replay"))
    return console.page(request, "bulk_progress.html", data, session=session)


@router.get("/bulk/{command_id}/progress/panel", response_class=HTMLResponse)
async def bulk_progress_panel(request: Request, session: Operator, command_id: uuid.UUID) -> HTMLResponse:
    console = console_of(request)
    data = await _progress(console, command_id)
    if data is None:
        return failure(console, request, session, OperationError(404, "no such bulk replay"))
    return console.page(request, "_bulk_progress.html", data, session=session)
