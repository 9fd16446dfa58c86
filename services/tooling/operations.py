"""Operator actions on recorded events (spec/inbound.md §4.2, §4.6): list, show, mark done,
quarantine and the state half of a replay. Shared by the admin API, ``dfm events`` and the
jobs service, so every path applies the same transitions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from contracts.commands import ReplayRequested
from services.infra.db.models import (
    EVENT_TABLES,
    TABLE_NAMES,
    EventAttemptRow,
    EventDeliveryRow,
    EventRow,
    IngressOutboxRow,
    QuarantineEventRow,
    ReconcileRunRow,
    SyncLogRow,
    TableName,
)

REDACTED = "[REDACTED]"
PII_KEYS = frozenset(
    {
        "email",
        "phone",
        "phone_number",
        "phonenumber",
        "from",
        "to",
        "body",
        "message",
        "first_name",
        "last_name",
        "firstname",
        "lastname",
        "name",
    }
)
MAX_LIMIT = 500


class OperationError(Exception):
    """An operator action that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(event_id: object) -> OperationError:
    return OperationError(404, f"Event not found: {event_id}")


def redact(value: Any) -> Any:
    """Recursively replace personal fields (spec/inbound.md §4.6) with ``[REDACTED]``.
    A listed key holding an object or list (Aloware's ``body`` wrapper) is walked into
    rather than blanked, so the structure stays readable and its personal fields are hidden."""
    if isinstance(value, dict):
        return {
            k: (redact(v) if isinstance(v, (dict, list)) or v is None or k.lower() not in PII_KEYS else REDACTED)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def mask_number(number: str | None) -> str | None:
    """The first four characters and ``***`` (texting list, as the original did)."""
    return None if number is None else number[:4] + "***"


def no_nul(**values: str | None) -> None:
    """A 422 for a NUL character in a value bound for a text column (PostgreSQL cannot hold
    one: it was a 500, found by schemathesis)."""
    for name, value in values.items():
        if value and "\x00" in value:
            raise OperationError(422, f"{name} must not contain NUL characters")


def parse_event_id(value: str) -> uuid.UUID:
    """A UUID, or a 404 (a malformed id names no event; the original answered 500)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise not_found(value) from None


# --- cursor pagination -----------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """Keyset position: the last row's ``(received_at, id)`` and the listing's order."""

    received_at: datetime
    id: uuid.UUID
    order: str

    def encode(self) -> str:
        raw = json.dumps([self.received_at.isoformat(), str(self.id), self.order]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            at, ident, order = json.loads(raw)
            return cls(datetime.fromisoformat(at), uuid.UUID(ident), str(order))
        except (ValueError, TypeError, json.JSONDecodeError):
            raise OperationError(422, "cursor is not valid") from None


@dataclass(frozen=True)
class EventFilter:
    """Filters of ``GET /api/admin/events``."""

    table: TableName = "webhook"
    source: str | None = None
    status: str | None = None
    event_type: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    order: Literal["asc", "desc"] = "asc"
    limit: int = 50
    cursor: str | None = None
    # an id as an operator pastes it: the event id, its dedupe key, the entity id (a GHL or
    # Aloware contact id, a call id), a texting conversation id or a broadcast id
    search: str | None = None


def _source_of(table: TableName, row: Any) -> str:
    return str(row.source) if table == "webhook" else table


def event_summary(table: TableName, row: Any, *, raw_payload: bool = False) -> dict[str, Any]:
    """The admin list/show shape (the original's field names plus the new ones)."""
    entity_type = getattr(row, "entity_type", "broadcast")
    entity_id = row.broadcast_id if table == "broadcast" else row.entity_id
    return {
        "id": str(row.id),
        "table": table,
        "receivedAt": row.received_at.isoformat(),
        "source": _source_of(table, row),
        "eventType": row.event_type,
        "entityType": entity_type,
        "entityId": entity_id,
        "status": row.status,
        "outcome": row.outcome,
        "outcomeReason": row.outcome_reason,
        "errorMessage": row.error_message,
        "attempts": row.attempts,
        "nextAttemptAt": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "processedAt": row.processed_at.isoformat() if row.processed_at else None,
        "streamSeq": row.stream_seq,
        "payload": row.payload_json if raw_payload else redact(row.payload_json),
    }


def _column(model: type[EventRow], name: str) -> ColumnElement[Any]:
    """A column only some event tables have (the caller checked which table it is)."""
    column: ColumnElement[Any] = model.__table__.c[name]
    return column


def _search(table: TableName, model: type[EventRow], text: str) -> ColumnElement[bool]:
    """Equality on every id column an operator may paste (each has an index)."""
    columns = {"webhook": ("entity_id",), "texting": ("entity_id", "conversation_id"), "broadcast": ("broadcast_id",)}[
        table
    ]
    matches: list[ColumnElement[bool]] = [model.dedupe_key == text, *(_column(model, c) == text for c in columns)]
    with contextlib.suppress(ValueError):
        matches.append(model.id == uuid.UUID(text))
    return or_(*matches)


async def list_events(
    engine: AsyncEngine, f: EventFilter, *, raw_payload: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of events and the cursor of the next page (None at the end).

    Keyset pagination on ``(received_at, id)``: rows present when the listing started are
    returned exactly once however many rows are inserted meanwhile.
    """
    if not 1 <= f.limit <= MAX_LIMIT:
        raise OperationError(422, f"limit must be between 1 and {MAX_LIMIT}")
    no_nul(
        source=f.source,
        status=f.status,
        event_type=f.event_type,
        entity_type=f.entity_type,
        entity_id=f.entity_id,
        search=f.search,
    )
    model = EVENT_TABLES[f.table]
    conditions: list[Any] = []
    if f.status:
        conditions.append(model.status == f.status)
    if f.source:
        if f.table == "webhook":
            conditions.append(_column(model, "source") == f.source)
        elif f.source != f.table:
            return [], None
    if f.event_type:
        conditions.append(model.event_type == f.event_type)
    if f.entity_type and f.table != "broadcast":
        conditions.append(_column(model, "entity_type") == f.entity_type)
    if f.entity_id:
        column = _column(model, "broadcast_id" if f.table == "broadcast" else "entity_id")
        conditions.append(column == f.entity_id)
    if f.search and f.search.strip():
        conditions.append(_search(f.table, model, f.search.strip()))
    if f.received_from:
        conditions.append(model.received_at >= f.received_from)
    if f.received_to:
        conditions.append(model.received_at < f.received_to)
    if f.cursor:
        cur = Cursor.decode(f.cursor)
        if cur.order != f.order:
            raise OperationError(422, "cursor belongs to a listing in the other order")
        # the plain bound next to the OR lets the index scan start at the cursor: without it a
        # page deep in a million rows walked the index from its end (0.7 s; bench/console)
        if f.order == "asc":
            conditions.append(model.received_at >= cur.received_at)
            conditions.append(
                or_(model.received_at > cur.received_at, and_(model.received_at == cur.received_at, model.id > cur.id))
            )
        else:
            conditions.append(model.received_at <= cur.received_at)
            conditions.append(
                or_(model.received_at < cur.received_at, and_(model.received_at == cur.received_at, model.id < cur.id))
            )
    ordering = (
        (model.received_at.asc(), model.id.asc()) if f.order == "asc" else (model.received_at.desc(), model.id.desc())
    )
    stmt = select(model).where(*conditions).order_by(*ordering).limit(f.limit + 1)
    async with engine.connect() as conn:
        rows = list((await conn.execute(stmt)).all())
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    events = [event_summary(f.table, r, raw_payload=raw_payload) for r in rows]
    next_cursor = Cursor(rows[-1].received_at, rows[-1].id, f.order).encode() if more and rows else None
    return events, next_cursor


# --- finding and showing one event -----------------------------------------------------------
async def find_event(
    conn: AsyncConnection, event_id: uuid.UUID, table: TableName | None = None, *, lock: bool = False
) -> tuple[TableName, Any]:
    """The event's table and row (searched in every table unless ``table`` is given)."""
    for name in (table,) if table else TABLE_NAMES:
        model = EVENT_TABLES[name]
        stmt = select(model).where(model.id == event_id)
        if lock:
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        if row is not None:
            return name, row
    raise not_found(event_id)


async def show_event(
    engine: AsyncEngine, event_id: uuid.UUID, table: TableName | None = None, *, raw_payload: bool = False
) -> dict[str, Any]:
    """One event with its per-consumer deliveries, attempts, quarantine records and
    ``sync_log`` rows."""
    async with engine.connect() as conn:
        name, row = await find_event(conn, event_id, table)
        deliveries = (
            await conn.execute(
                select(EventDeliveryRow)
                .where(EventDeliveryRow.event_id == event_id)
                .order_by(EventDeliveryRow.consumer)
            )
        ).all()
        attempts = (
            await conn.execute(
                select(EventAttemptRow).where(EventAttemptRow.event_id == event_id).order_by(EventAttemptRow.started_at)
            )
        ).all()
        logs = (
            await conn.execute(
                select(SyncLogRow).where(SyncLogRow.correlation_id == str(event_id)).order_by(SyncLogRow.started_at)
            )
        ).all()
        quarantines = (
            await conn.execute(
                select(QuarantineEventRow)
                .where(QuarantineEventRow.event_id == event_id)
                .order_by(QuarantineEventRow.quarantined_at)
            )
        ).all()
    detail = event_summary(name, row, raw_payload=raw_payload)
    detail["dedupeKey"] = row.dedupe_key
    detail["canonicalType"] = getattr(row, "canonical_type", None)
    detail["deliveries"] = [
        {
            "consumer": d.consumer,
            "status": d.status,
            "outcome": d.outcome,
            "outcomeReason": d.outcome_reason,
            "attempts": d.attempts,
            "lastError": d.last_error,
            "nextAttemptAt": _iso(d.next_attempt_at),
            "claimedAt": _iso(d.claimed_at),
            "updatedAt": _iso(d.updated_at),
        }
        for d in deliveries
    ]
    detail["attemptLog"] = [
        {
            "consumer": a.consumer,
            "attempt": a.attempt,
            "status": a.status,
            "outcome": a.outcome,
            "detail": a.detail,
            "streamSeq": a.stream_seq,
            "numDelivered": a.num_delivered,
            "redrive": a.replay_of,
            "startedAt": _iso(a.started_at),
            "finishedAt": _iso(a.finished_at),
            "vendorCalls": a.vendor_calls,
            "mappings": a.mappings,
        }
        for a in attempts
    ]
    detail["syncLog"] = [
        {
            "rule": s.rule,
            "direction": s.direction,
            "entityType": s.entity_type,
            "sourceId": s.source_id,
            "targetId": s.target_id,
            "status": s.status,
            "message": s.error_message,
            "attempt": s.attempt,
            "startedAt": _iso(s.started_at),
            "finishedAt": _iso(s.finished_at),
            "details": s.details,
        }
        for s in logs
    ]
    detail["quarantine"] = [
        {
            "reason": q.reason,
            "quarantinedAt": _iso(q.quarantined_at),
            "quarantinedBy": q.quarantined_by,
            "releasedAt": _iso(q.released_at),
            "releasedBy": q.released_by,
        }
        for q in quarantines
    ]
    return detail


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- transitions -----------------------------------------------------------------------------
async def mark_done(engine: AsyncEngine, event_id: uuid.UUID, by: str | None = None) -> TableName:
    """``pending``/``error``/``dead`` → ``done`` (skipped, ``marked_done_by_operator``)."""
    async with engine.begin() as conn:
        name, row = await find_event(conn, event_id, lock=True)
        if row.status == "done":
            return name
        if row.status not in ("pending", "error", "dead"):
            raise OperationError(409, f"event is {row.status}; only pending, error or dead events can be marked done")
        model = EVENT_TABLES[name]
        now = datetime.now(UTC)
        await conn.execute(
            update(model)
            .where(model.id == event_id)
            .values(
                status="done",
                outcome="skipped",
                outcome_reason="marked_done_by_operator",
                processed_at=now,
                next_attempt_at=None,
            )
        )
        await conn.execute(
            update(EventDeliveryRow)
            .where(EventDeliveryRow.event_id == event_id, EventDeliveryRow.status != "done")
            .values(
                status="done",
                outcome="skipped",
                outcome_reason="marked_done_by_operator",
                next_attempt_at=None,
                updated_at=now,
            )
        )
    return name


async def quarantine(
    engine: AsyncEngine,
    event_id: uuid.UUID,
    *,
    reason: str = "Manual quarantine",
    by: str | None = None,
    source: TableName | None = None,
) -> TableName:
    """Any status but ``processing`` → ``quarantined``; idempotent (one active record)."""
    async with engine.begin() as conn:
        name, row = await find_event(conn, event_id, source, lock=True)
        if row.status == "processing":
            raise OperationError(409, "event is being processed; quarantine it when it ends")
        await conn.execute(
            insert(QuarantineEventRow)
            .values(event_id=event_id, event_source=name, reason=reason, quarantined_by=by)
            .on_conflict_do_nothing(
                index_elements=["event_id", "event_source"], index_where=QuarantineEventRow.released_at.is_(None)
            )
        )
        model = EVENT_TABLES[name]
        await conn.execute(update(model).where(model.id == event_id).values(status="quarantined"))
    return name


async def reset_for_replay(
    conn: AsyncConnection,
    event_id: uuid.UUID,
    *,
    table: TableName | None = None,
    force: bool = False,
    by: str | None = None,
) -> tuple[TableName, Any]:
    """The state half of a replay (spec §4.2): ``done``/``error``/``dead`` (and, with
    ``force``, ``quarantined``) → ``pending`` with attempts and errors cleared, and every
    consumer's delivery back to ``pending`` so it runs again. Idempotency of the rules, not
    this reset, keeps effects from repeating. Returns the table and the row as it was."""
    name, row = await find_event(conn, event_id, table, lock=True)
    if row.status == "quarantined" and not force:
        raise OperationError(409, "event is quarantined; replay with force=true to release it")
    if row.status == "processing":
        raise OperationError(409, "event is being processed; replay it when it ends")
    model = EVENT_TABLES[name]
    now = datetime.now(UTC)
    if row.status == "quarantined":
        await conn.execute(
            update(QuarantineEventRow)
            .where(QuarantineEventRow.event_id == event_id, QuarantineEventRow.released_at.is_(None))
            .values(released_at=now, released_by=by)
        )
    await conn.execute(
        update(model)
        .where(model.id == event_id)
        .values(
            status="pending",
            attempts=0,
            error_message=None,
            last_error_at=None,
            next_attempt_at=None,
            claimed_at=None,
            outcome=None,
            outcome_reason=None,
            processed_at=None,
        )
    )
    await conn.execute(delete(EventDeliveryRow).where(EventDeliveryRow.event_id == event_id))
    return name, row


# --- replay commands (queued on the JOBS stream; the jobs service runs them) ---------------
async def replay_command(
    engine: AsyncEngine,
    event_id: uuid.UUID,
    *,
    table: TableName | None = None,
    force: bool = False,
    dry_run: bool = False,
    requested_by: str,
) -> ReplayRequested:
    """The replay command for one event, after the checks the admin API answers at once (404
    unknown, 409 quarantined without ``force`` or being processed) instead of leaving them to
    the jobs service's report. Publish it with ``replay_msg_id`` as ``Nats-Msg-Id``."""
    async with engine.connect() as conn:
        name, row = await find_event(conn, event_id, table)
    if row.status == "quarantined" and not force:
        raise OperationError(409, "event is quarantined; replay with force=true to release it")
    if row.status == "processing":
        raise OperationError(409, "event is being processed; replay it when it ends")
    return ReplayRequested(
        event_ids=[event_id], event_table=name, force=force, dry_run=dry_run, requested_by=requested_by
    )


def replay_msg_id(command: ReplayRequested) -> str:
    """The JOBS stream message id of a replay command (a re-sent command is taken once)."""
    return f"replay:{command.command_id}"


async def replay_report(engine: AsyncEngine, command_id: uuid.UUID) -> dict[str, Any] | None:
    """The report the jobs service recorded for a replay command (``reconcile_runs``, job
    ``replay``), or None until it has run through (while it runs: :func:`replay_status`)."""
    status = await replay_status(engine, command_id)
    if status is None or status["status"] != "success":
        return None
    return dict(status["totals"])


async def replay_status(engine: AsyncEngine, command_id: uuid.UUID) -> dict[str, Any] | None:
    """A replay command's row: ``status`` (running, success, error), ``totals`` (while
    running the counts so far: selected, done, replayed, skipped; then the report), the
    times and the error; None until the jobs service takes the command."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    ReconcileRunRow.status,
                    ReconcileRunRow.totals,
                    ReconcileRunRow.started_at,
                    ReconcileRunRow.finished_at,
                    ReconcileRunRow.error_message,
                )
                .where(
                    ReconcileRunRow.job_name == "replay", ReconcileRunRow.totals["commandId"].astext == str(command_id)
                )
                .order_by(ReconcileRunRow.started_at.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return {
        "status": row.status,
        "totals": dict(row.totals) if isinstance(row.totals, dict) else {},
        "startedAt": row.started_at,
        "finishedAt": row.finished_at,
        "error": row.error_message,
    }


REPLAY_PROGRESS_FIELDS = ("dryRun", "scanned", "selected", "done", "replayed", "wouldReplay", "skipped")


def replay_status_body(command_id: str, found: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /api/admin/replays/{commandId}`` and ``dfm_replay_status``
    answer: the status, the counts (so far, while running), the times, the error."""
    totals = found["totals"]
    body: dict[str, Any] = {"commandId": command_id, "status": found["status"]}
    body.update({k: totals.get(k) for k in REPLAY_PROGRESS_FIELDS if k in totals})
    body["startedAt"] = found["startedAt"].isoformat() if found["startedAt"] else None
    body["finishedAt"] = found["finishedAt"].isoformat() if found["finishedAt"] else None
    if found["error"]:
        body["error"] = found["error"]
    return body


async def is_quarantined(conn: AsyncConnection, event_id: uuid.UUID) -> bool:
    """True while an unreleased quarantine record exists."""
    found = await conn.scalar(
        select(QuarantineEventRow.id)
        .where(QuarantineEventRow.event_id == event_id, QuarantineEventRow.released_at.is_(None))
        .limit(1)
    )
    return found is not None


__all__ = [
    "Cursor",
    "EventFilter",
    "OperationError",
    "event_summary",
    "find_event",
    "is_quarantined",
    "list_events",
    "mark_done",
    "parse_event_id",
    "quarantine",
    "redact",
    "replay_command",
    "replay_msg_id",
    "replay_report",
    "replay_status",
    "replay_status_body",
    "reset_for_replay",
    "show_event",
]


async def failed_outbox_rows(engine: AsyncEngine, limit: int = 100) -> list[dict[str, Any]]:
    """Outbox rows the stream refused for good (``services.infra.outbox``), newest first:
    each was answered 2xx, so each needs an operator (shrink, re-send, or note it lost)."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    IngressOutboxRow.id,
                    IngressOutboxRow.subject,
                    IngressOutboxRow.dedupe_key,
                    IngressOutboxRow.headers,
                    IngressOutboxRow.attempts,
                    IngressOutboxRow.last_error,
                    IngressOutboxRow.created_at,
                    IngressOutboxRow.failed_at,
                    func.length(IngressOutboxRow.body).label("size"),
                )
                .where(IngressOutboxRow.failed_at.is_not(None))
                .order_by(IngressOutboxRow.failed_at.desc())
                .limit(max(1, min(limit, MAX_LIMIT)))
            )
        ).all()
    return [
        {
            "id": str(r.id),
            "subject": r.subject,
            "dedupeKey": r.dedupe_key,
            "eventId": (r.headers or {}).get("Dfm-Event-Id"),
            "sizeBytes": r.size,
            "attempts": r.attempts,
            "error": r.last_error,
            "createdAt": _iso(r.created_at),
            "failedAt": _iso(r.failed_at),
        }
        for r in rows
    ]
