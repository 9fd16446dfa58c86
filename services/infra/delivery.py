"""Per-consumer event state and the delivery loop every sync consumer shares.

For each message: make sure the event's row exists (permanent dedupe: a duplicate outside
the stream window is acked and not processed), refuse quarantined events, claim the
consumer's ``event_deliveries`` row (a finished delivery is never re-run, a running one is
not run twice), run the rule under ``DFM_RULE_DEADLINE_S``, then record the outcome and the
event's aggregate status *before* acking (spec/inbound.md §4.2, spec/outbound.md §0.1).
Errors decide delivery (STYLE.md §4): RetryLater → nak with the delay (error, or dead once
the budget is spent), Permanent → dead and terminate; a rule past its deadline is a
``DeadlineExceeded`` retry. Every failed attempt also leaves one ``sync_log`` error row
(spec/outbound.md §0.3), written with the delivery's end state, so the sync-error-rate alert
counts every failure and not only those a rule logged itself.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from sqlalchemy import (
    ARRAY,
    DateTime,
    Table,
    Text,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    null,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import HEADER_REDRIVE, WebhookEvent
from contracts.lanes import Lane
from contracts.streams import ConsumerSpec, expected_consumers
from contracts.subjects import EntityType, Source
from services.infra import tracing
from services.infra.db.errors import UNSTORABLE_VALUE, driver_error, sqlstate
from services.infra.db.models import EVENT_TABLES, EventAttemptRow, EventDeliveryRow, SyncLogRow, TableName, core_table
from services.infra.errors import (
    DeadlineExceeded,
    MappingConflict,
    Misconfigured,
    Permanent,
    RetryLater,
)
from services.infra.events import row_for
from services.infra.lanes import lane_scope
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.trace import CURRENT, AttemptTrace

log = get_logger(__name__)

OutcomeName = Literal["applied", "skipped", "ignored", "echo"]
EVENTS = Counter("dfm_events_total", "Event outcomes per consumer", ["consumer", "canonical_type", "status", "outcome"])
PROCESSING = Histogram("dfm_event_processing_duration_seconds", "Rule duration", ["consumer", "canonical_type"])
ATTEMPTS = Histogram("dfm_event_attempts", "Attempts an event needed", ["consumer"], buckets=(1, 2, 3, 5, 8, 11, 20))
ECHOES = Counter("dfm_events_echo_total", "Webhooks recognised as echoes of our own writes", ["source"])
MALFORMED = Counter("dfm_malformed_messages_total", "Stream messages that are not envelopes", ["consumer"])
HEARTBEAT_FAILURES = Counter(
    "dfm_heartbeat_failures_total",
    "Heartbeats (+WPI or claim renewal) that failed and are tried again next tick",
    ["consumer"],
)
CLAIM_HELD = Counter(
    "dfm_deliveries_claim_held_total",
    "Messages NAKed because another attempt holds a live claim on the delivery",
    ["consumer"],
)
RULE_FAILURES = Counter(
    "dfm_rule_failures_total", "Failed rule attempts (each one sync_log error row), by cause", ["consumer", "cause"]
)
# The sync_log direction of a consumer's rules, by the event's source (spec/outbound.md §0.3):
# the failure row of a rule that wrote none itself says what the rule would have.
_DIRECTIONS = {
    ("ghl-sync", "aloware"): "aloware_to_ghl",
    ("ghl-sync", "texting"): "texting_to_ghl",
    ("ghl-sync", "broadcast"): "texting_to_ghl",
    ("aloware-sync", "ghl"): "ghl_to_aloware",
    ("aloware-sync", "texting"): "texting_to_aloware",
    ("verity-sync", "ghl"): "ghl_to_verity",
    ("verity-sync", "ghl_provider"): "ghl_to_texting",
}


@dataclass(frozen=True)
class Outcome:
    """What a rule did: ``applied``, ``skipped``, ``ignored`` or ``echo`` (with a reason)."""

    outcome: OutcomeName
    reason: str | None = None


Rule = Callable[[WebhookEvent, int], Awaitable[Outcome]]


@dataclass(frozen=True)
class Failure:
    """A failed attempt as its ``sync_log`` error row records it: the ledger's reason and,
    for the failures alerted on their own (spec/outbound.md §2.6), a ``cause``."""

    reason: str
    cause: str | None = None


def failure_cause(exc: Exception) -> str | None:
    """``mapping_conflict`` (CA-7), ``provider_misconfigured`` (the GHL conversation provider
    refused or unset, G12; Verity refusing our credentials), else None. From the error's type,
    raised where the failure was known (``MappingConflict``, ``Misconfigured``), never from its
    text."""
    if isinstance(exc, MappingConflict):
        return "mapping_conflict"
    if isinstance(exc, Misconfigured):
        return "provider_misconfigured"
    return None


@dataclass(frozen=True)
class Claim:
    """What ``DeliveryLedger.begin`` decided for one message: run the rule as ``attempt``;
    or, with ``held_for_s``, another attempt holds a live claim (NAK, look again then); or,
    with neither, there is nothing to do (a duplicate, a finished or quarantined delivery:
    ack)."""

    attempt: int | None = None
    held_for_s: float | None = None


_CLAIM = text(
    "SELECT o_attempt, o_status, o_held_ms FROM dfm_delivery_claim(CAST(:table AS text), CAST(:event AS uuid), "
    "CAST(:consumer AS text), CAST(:event_table AS text), CAST(:lease_ms AS bigint), CAST(:expected AS text[]))"
)


# Core tables: ORM-enabled DML spends more CPU per statement on the same SQL
_TABLES: dict[str, Table] = {t.__tablename__: core_table(t) for t in EVENT_TABLES.values()}
_DELIVERIES = core_table(EventDeliveryRow)
_ATTEMPTS = core_table(EventAttemptRow)


def event_table(event: WebhookEvent) -> TableName:
    """Which event table holds ``event``: webhook, texting or broadcast."""
    if event.source is Source.TEXTING:
        return "texting"
    if event.source is Source.BROADCAST:
        return "broadcast"
    return "webhook"


@functools.cache
def _event_row_statements(table_name: str, keys: tuple[str, ...]) -> tuple[Any, Any]:
    """``begin``'s event-row statement for ``table_name`` and ``row_for``'s ``keys``, built once
    (its parameters ``p_<column>``): the row it inserted, else the one already there; and the
    second look at the one already there. No conflict target: the recorder or another consumer
    inserting the same event at the same moment collides on the primary key too, and that
    must not be an error (it was: an IntegrityError and a NAK, ~1 s late, in the e2e bench).
    Built per call, these statements' construction and cache keys were most of the ledger's
    CPU (bench/ledger)."""
    table = _TABLES[table_name]
    inserted = (
        insert(table)
        .values({k: bindparam(f"p_{k}", type_=table.c[k].type) for k in keys})
        .on_conflict_do_nothing()
        .returning(table.c.id, table.c.status)
        .cte("inserted")
    )
    existing = select(table.c.id, table.c.status).where(table.c.dedupe_key == bindparam("p_dedupe_key"))
    return select(inserted.c.id, inserted.c.status).union_all(existing), existing


_SYNC_ROW_COLUMNS = tuple(c.name for c in SyncLogRow.__table__.columns)


def _sync_rows_cte() -> Any:
    """The rule's deferred ``sync_log`` rows (``AttemptTrace.sync_rows``), a JSON array in
    ``p_sync_rows``, inserted by ``jsonb_populate_recordset`` (each key cast to its column)."""
    rows = (
        func.jsonb_populate_recordset(text("NULL::sync_log"), bindparam("p_sync_rows", type_=JSONB))
        .table_valued(*_SYNC_ROW_COLUMNS)
        .alias("r")
    )
    columns = [rows.c[name] for name in _SYNC_ROW_COLUMNS]
    return insert(SyncLogRow).from_select(list(_SYNC_ROW_COLUMNS), select(*columns)).cte("sync_rows")


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else str(v) if k == "id" else v for k, v in row.items()}


@functools.cache
def _finish_statement(
    table_name: str, keep_applied: bool, last_error: str, refund: bool, with_attempt: bool, with_sync_rows: bool
) -> Any:
    """``finish``'s statement for one shape, built once (see ``DeliveryLedger.finish``): the
    delivery's end state as a CTE returning the row it wrote, the attempt's row and its
    deferred sync_log rows, and the event's aggregate told that row (dfm_event_aggregate_as,
    migrations/versions/0010; it ignores the stored one, which the statement may not show it
    yet); one statement, atomic without a transaction."""
    d = _DELIVERIES
    values: dict[str, Any] = {
        "status": bindparam("p_status", type_=Text),
        "updated_at": bindparam("p_updated_at", type_=DateTime(timezone=True)),
        "next_attempt_at": bindparam("p_next", type_=DateTime(timezone=True)),
        "outcome": bindparam("p_outcome", type_=Text),
        "outcome_reason": bindparam("p_reason", type_=Text),
    }
    if keep_applied:
        # two deliveries of one event ran at once and this one found the work done: the
        # event's effect was applied, and that is what the delivery keeps saying
        keep = d.c.outcome == "applied"
        values["outcome"] = case((keep, "applied"), else_=values["outcome"])
        values["outcome_reason"] = case((keep, d.c.outcome_reason), else_=values["outcome_reason"])
    if last_error == "set":
        values["last_error"] = bindparam("p_error", type_=Text)
    elif last_error == "clear":
        values["last_error"] = None  # the history stays in event_attempts
    if refund:
        values["attempts"] = d.c.attempts - 1
    delivery = (
        update(d)
        .where(d.c.event_id == bindparam("p_event"), d.c.consumer == bindparam("p_consumer"))
        .values(values)
        .returning(d.c.status, d.c.outcome, d.c.outcome_reason, d.c.attempts)
        .cte("delivery")
    )
    ctes: list[Any] = []
    if with_attempt:
        a = _ATTEMPTS
        ctes.append(
            insert(a)
            .values(
                event_id=bindparam("p_event", type_=a.c.event_id.type),
                consumer=bindparam("p_consumer", type_=Text),
                attempt=bindparam("p_attempt", type_=a.c.attempt.type),
                stream_seq=bindparam("p_stream_seq", type_=a.c.stream_seq.type),
                num_delivered=bindparam("p_num_delivered", type_=a.c.num_delivered.type),
                replay_of=bindparam("p_replay_of", type_=a.c.replay_of.type),
                started_at=bindparam("p_started_at", type_=a.c.started_at.type),
                status=bindparam("p_status", type_=Text),
                outcome=bindparam("p_outcome", type_=Text),
                detail=bindparam("p_detail", type_=a.c.detail.type),
                vendor_calls=bindparam("p_vendor_calls", type_=a.c.vendor_calls.type),
                mappings=bindparam("p_mappings", type_=a.c.mappings.type),
            )
            .cte("attempt")
        )
        if with_sync_rows:
            ctes.append(_sync_rows_cte())
    found = delivery.c.status.is_not(None)
    aggregate = func.dfm_event_aggregate_as(
        cast(literal(table_name), Text),
        cast(bindparam("p_event", type_=PG_UUID(as_uuid=True)), PG_UUID(as_uuid=True)),
        cast(bindparam("p_expected", type_=ARRAY(Text)), ARRAY(Text)),
        cast(bindparam("p_error", type_=Text), Text),
        cast(bindparam("p_next", type_=DateTime(timezone=True)), DateTime(timezone=True)),
        case((found, cast(bindparam("p_consumer", type_=Text), Text)), else_=null()),
        delivery.c.status,
        delivery.c.outcome,
        delivery.c.outcome_reason,
        delivery.c.attempts,
    )
    one = select(literal(1).label("one")).subquery("one")
    return select(aggregate).select_from(one.outerjoin(delivery, true())).add_cte(*ctes)


class DeliveryLedger:
    """Reads and writes ``event_deliveries`` and the event's own row for one consumer.

    A ``processing`` delivery is a claim held by one running attempt. The attempt renews
    ``claimed_at`` with every heartbeat (``renew``) until it finishes or reaches the rule
    deadline; the claim is live while ``claimed_at`` is younger than ``claim_lease_s``
    (three heartbeats). So a claim expires one lease after its holder died, or at the latest
    one lease after the rule deadline of a holder that is stuck; only then may another
    delivery of the event take it over.
    """

    def __init__(
        self, engine: AsyncEngine, consumer: str, settings: Settings, *, claim_lease_s: float | None = None
    ) -> None:
        self._engine = engine
        self.consumer = consumer
        self._settings = settings
        self.claim_lease_s = claim_lease_s or 3 * heartbeat_interval(settings.dfm_consumer_ack_wait_s or 60.0)

    async def begin(self, event: WebhookEvent, stream_seq: int | None) -> Claim:
        """Claim this consumer's delivery for a new attempt (see ``Claim``).

        A ``pending`` or ``error`` delivery is claimed; so is a ``processing`` one whose
        claim expired (its attempt died, or is stuck past the deadline and no longer
        renews). A *live* claim is not taken: two deliveries of one event at once (a sweep
        re-drive of a lagging event, a redelivery after a NATS blip while the first attempt
        still runs) would otherwise run the rule twice concurrently. Such a message is not
        acked either: if it is the very message the running attempt holds, an ack would
        settle it for that attempt, and were the attempt then to die the event would be
        lost to the stream. It is NAKed until the claim's lease could have run out
        (``held_for_s``, at most one lease): by then the attempt has finished (the delivery
        is done and the message is acked) or has died (the claim has expired and this
        delivery runs the rule), so it is never run twice and never dropped.
        """
        table_name = event_table(event)
        table, values = row_for(event, stream_seq, self._settings.default_phone_region)
        # two statements, each its own transaction (migrations/versions/0010): the event row
        # needs no transaction with the claim (the recorder inserts it on its own too)
        async with self._engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            # one round trip: the row this statement inserted, else the one already there. No
            # conflict target: the recorder or another consumer inserting the same event at the
            # same moment collides on the primary key too, and that must not be an error (it
            # was: an IntegrityError and a NAK, ~1 s late, in the e2e bench)
            recorded, existing = _event_row_statements(table.__tablename__, tuple(values))
            params = {f"p_{k}": v for k, v in values.items()}
            row = (await conn.execute(recorded, params)).first()
            if row is None:  # another transaction committed it while this statement waited
                row = (await conn.execute(existing, params)).one()
            if row.id != event.event_id:
                log.info("duplicate_event_skipped", event_id=str(event.event_id), first_id=str(row.id))
                return Claim()
            if row.status == "quarantined" or event.outcome_hint:
                return Claim()
            # the claim and, when made, the event's aggregate: dfm_delivery_claim
            state = (
                await conn.execute(
                    _CLAIM,
                    {
                        "table": table.__tablename__,
                        "event": event.event_id,
                        "consumer": self.consumer,
                        "event_table": table_name,
                        "lease_ms": round(self.claim_lease_s * 1000),
                        "expected": expected_consumers(event.subject),
                    },
                )
            ).one()
        if state.o_attempt is not None:
            return Claim(attempt=int(state.o_attempt))
        if state.o_status is not None and state.o_status not in ("processing", "pending", "error"):
            return Claim()  # done or dead: never run again
        # processing (live), or changed since the claim was refused: never longer than a lease
        wait = float(state.o_held_ms) / 1000 if state.o_held_ms is not None else 0.0
        return Claim(held_for_s=min(max(wait, 0.5), self.claim_lease_s))

    async def renew(self, event: WebhookEvent, attempt: int) -> bool:
        """Keep ``attempt``'s claim live (a heartbeat); False when it is no longer ours (it
        expired and another delivery took it over, or the delivery was finished)."""
        async with self._engine.begin() as conn:
            renewed = await conn.execute(
                update(EventDeliveryRow)
                .where(
                    EventDeliveryRow.event_id == event.event_id,
                    EventDeliveryRow.consumer == self.consumer,
                    EventDeliveryRow.status == "processing",
                    EventDeliveryRow.attempts == attempt,
                )
                .values(claimed_at=func.now())
            )
        return bool(renewed.rowcount)

    async def finish(
        self,
        event: WebhookEvent,
        status: str,
        *,
        outcome: Outcome | None = None,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        refund_attempt: bool = False,
        attempt: int | None = None,
        trace: AttemptTrace | None = None,
        failure: Failure | None = None,
    ) -> None:
        """Record the delivery's end state, the event's aggregate and (with ``trace``) the
        attempt's ``event_attempts`` row and the sync_log rows its rule left to the finish, in
        one statement; with ``failure`` too, the attempt's ``sync_log`` error row
        (``_failure_rows``).

        The aggregate (spec/inbound.md §4.2) is the database function's: it locks the event
        row, then reads the deliveries and updates the row (migrations/versions/0004 and
        0010): dead > error > processing > pending > done over the consumers that take the
        subject (no delivery row yet counts as pending); when done, the best outcome (applied
        > echo > skipped > ignored) and a reason, preferring one that says more than
        "Unhandled…"/"…_disabled"; on error/dead, the error and next attempt time. A
        quarantined event is left alone."""
        table = EVENT_TABLES[event_table(event)]
        with_attempt = trace is not None and attempt is not None
        keep_applied = outcome is not None and outcome.outcome != "applied"
        last_error = "set" if error is not None else "clear" if status == "done" else "keep"
        with_sync_rows = with_attempt and bool(trace and trace.sync_rows)
        shape = (table.__tablename__, keep_applied, last_error, refund_attempt, with_attempt)
        statement: Any = _finish_statement(*shape, with_sync_rows)
        params: dict[str, Any] = {
            "p_event": event.event_id,
            "p_consumer": self.consumer,
            "p_status": status,
            "p_updated_at": datetime.now(UTC),
            "p_next": next_attempt_at,
            "p_outcome": outcome.outcome if outcome else None,
            "p_reason": outcome.reason if outcome else None,
            "p_error": error[:2000] if error is not None else None,
            "p_expected": expected_consumers(event.subject),
        }
        if trace is not None and attempt is not None:
            params |= {
                "p_attempt": attempt,
                "p_stream_seq": trace.stream_seq,
                "p_num_delivered": trace.num_delivered,
                "p_replay_of": trace.replay_of,
                "p_started_at": trace.started_at,
                "p_detail": outcome.reason if outcome else error,
                "p_vendor_calls": trace.vendor_calls,
                "p_mappings": trace.mappings,
            }
            if with_sync_rows:
                params["p_sync_rows"] = [_jsonable(row) for row in trace.sync_rows]
            if failure is not None:  # rare: built for this attempt
                statement = statement.add_cte(*self._failure_rows(event, status, attempt, trace, failure))
        try:
            await self._autocommit(statement, params)
        except DBAPIError as exc:
            refused = driver_error(exc, UNSTORABLE_VALUE) if with_sync_rows else None
            if refused is None:
                raise
            # a value of the rule's rows PostgreSQL refuses (a NUL, say) must not keep the
            # attempt from ending: its end is written without them, the loss logged
            assert trace is not None and attempt is not None
            log.warning(
                "sync_rows_unstorable",
                event_id=str(event.event_id),
                consumer=self.consumer,
                rows=len(trace.sync_rows),
                sqlstate=sqlstate(refused),
            )
            params.pop("p_sync_rows")
            statement = _finish_statement(*shape, False)
            if failure is not None:
                statement = statement.add_cte(*self._failure_rows(event, status, attempt, trace, failure))
            await self._autocommit(statement, params)

    async def _autocommit(self, statement: Any, params: dict[str, Any]) -> None:
        async with self._engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(statement, params)

    def _failure_rows(
        self, event: WebhookEvent, status: str, attempt: int, trace: AttemptTrace, failure: Failure
    ) -> list[Any]:
        """The failed attempt's ``sync_log`` error row, as CTEs of ``finish``'s statement.

        A rule that logged its own error row in this attempt (M-1, F-1: with its rule id and
        target) keeps it: the delivery's facts and the cause are merged into its ``details``
        and no second row is written, so the error rate counts the attempt once. Otherwise,
        or when the rule's row was rolled back with its transaction, one row from what the
        ledger knows: the consumer's direction for the source, the event's entity, the
        reason the delivery records anyway (no payload data), ``rule`` unknown (NULL)."""
        mark = {"consumer": self.consumer, "canonicalType": event.canonical_type, "delivery": status}
        if failure.cause:
            mark["cause"] = failure.cause
        entity = "message" if event.entity_type is EntityType.PROVIDER_MESSAGE else event.entity_type.value
        row = {
            "direction": _DIRECTIONS.get((self.consumer, event.source.value), "unknown"),
            "entity_type": entity,
            "entity_id": event.entity_id or "unknown",
            "source_id": event.entity_id or "unknown",
            "status": "error",
            "started_at": trace.started_at,
            "finished_at": func.now(),
            "error_message": failure.reason[:2000],
            "correlation_id": str(event.event_id),
            "attempt": attempt,
            "details": cast(mark, JSONB),
        }
        if not trace.sync_errors:
            return [insert(SyncLogRow).values(**row).cte("sync_error")]
        # details may be SQL NULL or JSON null (how log_sync stores None): merge into an object
        details = case((func.jsonb_typeof(SyncLogRow.details) == "object", SyncLogRow.details), else_=cast({}, JSONB))
        marked = (
            update(SyncLogRow)
            .where(SyncLogRow.id.in_(trace.sync_errors), SyncLogRow.status == "error")
            .values(details=details.op("||")(cast(mark, JSONB)))
            .returning(SyncLogRow.id)
            .cte("sync_marked")
        )
        columns = [SyncLogRow.__table__.c[name] for name in row]
        values: list[Any] = [
            v if name in ("finished_at", "details") else literal(v, type_=SyncLogRow.__table__.c[name].type)
            for name, v in row.items()
        ]
        unless_marked = select(*values).where(~exists(select(marked.c.id)))
        return [marked, insert(SyncLogRow).from_select(columns, unless_marked).cte("sync_error")]


def consumer_batch(settings: Settings) -> int:
    """Messages handled at once by one process: a rule holds its contact-lock connection and
    briefly a second one (rate budget, ledger), so the pool must cover two per message."""
    return max(1, (settings.db_max_connections - 1) // 2)


def heartbeat_interval(ack_wait_s: float) -> float:
    """How often a running rule tells JetStream (+WPI) and the ledger (claim) it is alive:
    three times per AckWait, so one lost beat neither redelivers the message nor expires
    the claim."""
    return max(0.5, ack_wait_s / 3)


def failure_reason(exc: Exception) -> str:
    """An unexpected exception as a ledger reason. For a database error, the server's message
    only: SQLAlchemy's text adds the statement and its parameters, which can hold personal
    data (phone numbers in contact-lock keys)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc).__name__}: {exc.orig}"
    return f"{type(exc).__name__}: {exc}"


def backoff_delay(settings: Settings, attempt: int) -> float:
    """``min(base · 2^(n−1), max)`` with ±20 % jitter, n = attempts made (spec §4.3)."""
    base = settings.retry_base_delay_s * (2 ** max(0, attempt - 1))
    return float(min(base, settings.retry_max_delay_s)) * random.uniform(0.8, 1.2)


class EventConsumer:
    """Runs ``rule`` for every message of one durable consumer, with the ledger around it."""

    def __init__(self, settings: Settings, spec: ConsumerSpec, engine: AsyncEngine, rule: Rule) -> None:
        self._settings = settings
        self._spec = spec
        self._rule = rule
        self._ack_wait = settings.dfm_consumer_ack_wait_s or spec.ack_wait_s
        self._heartbeat_s = heartbeat_interval(self._ack_wait)
        # a lane's durable records under its service (ghl-sync-bulk's deliveries are ghl-sync's)
        self._name = spec.owner
        self._lane: Lane = spec.lane or "realtime"
        self.ledger = DeliveryLedger(engine, self._name, settings, claim_lease_s=3 * self._heartbeat_s)

    async def handle(self, msg: Msg) -> None:
        """One message, end to end, in its durable's lane (what the vendor budget reads)."""
        with lane_scope(self._lane):
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            event = WebhookEvent.from_bytes(msg.data)
        except (ValidationError, ValueError) as exc:
            MALFORMED.labels(self._name).inc()
            log.error(
                "malformed_message_terminated",
                consumer=self._name,
                subject=msg.subject,
                error=str(exc).splitlines()[0],
            )
            await msg.term()
            return
        meta = msg.metadata if msg.reply else None
        trace = AttemptTrace(
            stream_seq=meta.sequence.stream if meta else None,
            num_delivered=meta.num_delivered if meta else None,
            replay_of=(msg.headers or {}).get(HEADER_REDRIVE),
        )
        try:
            claim = await self.ledger.begin(event, trace.stream_seq)
        except SQLAlchemyError as exc:  # e.g. a deadlock victim or the database restarting
            if (cause := driver_error(exc, UNSTORABLE_VALUE)) is not None:
                # the event's own row cannot be stored: retrying cannot help, and the recorder
                # gives it a dead_letters row; terminate (the advisory records it too)
                MALFORMED.labels(self._name).inc()
                log.error(
                    "unstorable_event_terminated",
                    event_id=str(event.event_id),
                    consumer=self._name,
                    error=type(cause).__name__,
                    sqlstate=sqlstate(cause),
                )
                await msg.term()
                return
            log.warning(
                "claim_failed_will_retry",
                event_id=str(event.event_id),
                consumer=self._name,
                error=type(exc).__name__,
            )
            await msg.nak(delay=1.0)
            return
        if claim.held_for_s is not None:  # another attempt runs it now (DeliveryLedger.begin)
            CLAIM_HELD.labels(self._name).inc()
            log.info(
                "delivery_claim_held",
                event_id=str(event.event_id),
                consumer=self._name,
                delay_s=round(claim.held_for_s, 2),
                redrive=trace.replay_of,
            )
            await msg.nak(delay=claim.held_for_s)
            return
        if claim.attempt is None:
            await msg.ack()
            return
        attempt = claim.attempt
        bound = {
            "event_id": str(event.event_id),
            "consumer": self._name,
            "lane": self._lane,
            "canonical_type": event.canonical_type,
            "subject": event.subject,
        }
        if trace.replay_of:
            bound["redrive"] = trace.replay_of
        loop = asyncio.get_running_loop()
        started = loop.time()
        heartbeat = asyncio.create_task(
            self._keep_alive(msg, event, attempt, started + self._settings.dfm_rule_deadline_s)
        )
        # continues the trace the ingress put in the message headers (tracing.py)
        with tracing.span(
            f"{self._spec.durable} {event.canonical_type}",
            kind=SpanKind.CONSUMER,
            parent=msg.headers or {},
            attributes={"dfm.event_id": str(event.event_id), "dfm.attempt": attempt},
        ):
            token = CURRENT.set(trace)
            try:
                outcome = await self._run_rule(event, attempt)
            except RetryLater as exc:
                heartbeat.cancel()
                await self._retry(msg, event, attempt, exc, bound, trace)
            except Permanent as exc:
                heartbeat.cancel()
                why = failure_cause(exc)
                log.warning("event_dead", reason=exc.reason, attempt=attempt, cause=why, **bound)
                await self.ledger.finish(
                    event, "dead", error=exc.reason, attempt=attempt, trace=trace, failure=Failure(exc.reason, why)
                )
                self._failed(event, "dead", why)
                await msg.term()
            except Exception as exc:  # an unexpected bug: retried with back-off, then dead
                heartbeat.cancel()
                if (cause := driver_error(exc, UNSTORABLE_VALUE)) is not None:
                    # a value from the payload PostgreSQL refuses (class 22/54): the same on
                    # every retry, so dead now instead of after the whole retry budget
                    reason = f"unstorable_value: {type(cause).__name__} (SQLSTATE {sqlstate(cause)})"
                    await self._dead(msg, event, attempt, reason, bound, trace)
                    return
                reason = failure_reason(exc)
                if isinstance(exc, DBAPIError):  # a lock or statement timeout, the database away
                    log.warning("rule_failed", attempt=attempt, error=reason, **bound)
                else:
                    log.exception("rule_failed", attempt=attempt, **bound)
                await self._retry(msg, event, attempt, RetryLater(None, reason), bound, trace)
            else:
                heartbeat.cancel()
                await self.ledger.finish(event, "done", outcome=outcome, attempt=attempt, trace=trace)
                PROCESSING.labels(self._name, event.canonical_type).observe(loop.time() - started)
                ATTEMPTS.labels(self._name).observe(attempt)
                EVENTS.labels(self._name, event.canonical_type, "done", outcome.outcome).inc()
                if outcome.outcome == "echo":
                    ECHOES.labels(event.source.value).inc()
                log.info("event_done", outcome=outcome.outcome, reason=outcome.reason, attempt=attempt, **bound)
                await msg.ack()
            finally:
                CURRENT.reset(token)

    async def _run_rule(self, event: WebhookEvent, attempt: int) -> Outcome:
        """The rule, cancelled at ``DFM_RULE_DEADLINE_S``: a vendor that stops answering or a
        wait that never ends must not hold the message, its contact lock and two pool
        connections for ever. A ``TimeoutError`` of the rule's own is not the deadline."""
        deadline = self._settings.dfm_rule_deadline_s
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                return await self._rule(event, attempt)
        except TimeoutError:
            if timeout.expired():
                raise DeadlineExceeded(deadline) from None
            raise

    async def _keep_alive(self, msg: Msg, event: WebhookEvent, attempt: int, deadline_at: float) -> None:
        """While the rule runs: tell JetStream (+WPI), so a short AckWait is safe and only a
        dead process's messages are redelivered, quickly; and renew the delivery's claim, so
        no other delivery of the event runs it meanwhile (``DeliveryLedger``).

        A failed beat (a NATS reconnect, a database blip) is counted and tried again on the
        next tick: giving up for good would let a healthy long rule be redelivered and run
        twice. Past the rule deadline the beats stop: the rule has been cancelled, and one
        that ignores its cancellation must not keep its message in progress, or its claim
        live, for ever; JetStream then redelivers and the claim expires one lease later."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if loop.time() >= deadline_at:
                log.warning(
                    "heartbeat_stopped_past_deadline",
                    event_id=str(event.event_id),
                    consumer=self._name,
                    attempt=attempt,
                )
                return
            try:
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - any failed beat is retried next tick
                self._beat_failed(event, "in_progress", exc)
            try:
                async with asyncio.timeout(self._heartbeat_s):  # never delays the next +WPI
                    ours = await self.ledger.renew(event, attempt)
            except Exception as exc:  # noqa: BLE001 - as above
                self._beat_failed(event, "claim", exc)
            else:
                if not ours:
                    log.warning(
                        "delivery_claim_lost",
                        event_id=str(event.event_id),
                        consumer=self._name,
                        attempt=attempt,
                    )

    def _failed(self, event: WebhookEvent, status: str, cause: str | None) -> None:
        """Count a failed attempt: as an event outcome and by cause (its sync_log row's)."""
        EVENTS.labels(self._name, event.canonical_type, status, "").inc()
        RULE_FAILURES.labels(self._name, cause or "other").inc()

    def _beat_failed(self, event: WebhookEvent, beat: str, exc: Exception) -> None:
        HEARTBEAT_FAILURES.labels(self._name).inc()
        log.warning(
            "heartbeat_failed",
            event_id=str(event.event_id),
            consumer=self._name,
            beat=beat,
            error=type(exc).__name__,
        )

    async def _dead(
        self, msg: Msg, event: WebhookEvent, attempt: int, reason: str, bound: dict[str, Any], trace: AttemptTrace
    ) -> None:
        """End the delivery ``dead`` with ``reason`` (and its sync_log error row), terminate."""
        log.warning("event_dead", reason=reason, attempt=attempt, **bound)
        await self.ledger.finish(event, "dead", error=reason, attempt=attempt, trace=trace, failure=Failure(reason))
        self._failed(event, "dead", None)
        await msg.term()

    async def _retry(
        self, msg: Msg, event: WebhookEvent, attempt: int, exc: RetryLater, bound: dict[str, Any], trace: AttemptTrace
    ) -> None:
        """Record ``error`` (or ``dead`` once the budget is spent) and schedule the next try.

        A retry due within ``DFM_RETRY_NAK_MAX_DELAY_S`` is a NAK with that delay (JetStream
        redelivers). A later one is acked and left to the sweep (S3 re-drives it when
        ``next_attempt_at`` has passed): a NAKed message holds one of the durable's
        ``max_ack_pending`` slots until it is redelivered, so hour-long back-offs during a
        vendor outage would otherwise stall the whole consumer.
        """
        if exc.counts_as_attempt and attempt >= self._settings.retry_max_attempts:
            await self._dead(msg, event, attempt, f"retry budget spent: {exc.reason}", bound, trace)
            return
        delay = exc.delay if exc.delay is not None else backoff_delay(self._settings, attempt)
        # A wait our own rate budget (or another attempt's effect claim) imposes is no failure:
        # the attempt is refunded, writes no sync_log error row and counts as `deferred`, so
        # neither error rate rises while we only pace ourselves
        await self.ledger.finish(
            event,
            "error",
            error=exc.reason,
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
            refund_attempt=not exc.counts_as_attempt,
            attempt=attempt,
            trace=trace,
            failure=Failure(exc.reason) if exc.counts_as_attempt else None,
        )
        if exc.counts_as_attempt:
            self._failed(event, "error", None)
        else:
            EVENTS.labels(self._name, event.canonical_type, "deferred", "").inc()
        if delay <= self._settings.dfm_retry_nak_max_delay_s:
            log.info("event_retry", reason=exc.reason, delay_s=round(delay, 2), attempt=attempt, **bound)
            await msg.nak(delay=delay)
        else:
            log.info("event_retry_by_sweep", reason=exc.reason, delay_s=round(delay, 2), attempt=attempt, **bound)
            await msg.ack()
