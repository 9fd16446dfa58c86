"""Retention (issue #16 item 10): rows past their age are deleted, or emptied where the row
itself must stay.

* ``sync_log`` after ``RETENTION_SYNC_LOG_DAYS`` (spec/outbound.md §4.3: "e.g. 180 days");
* ``event_attempts`` after ``RETENTION_EVENT_ATTEMPTS_DAYS`` (``dfm trace`` then shows the
  deliveries' end states only);
* ``outbound_writes`` after ``RETENTION_OUTBOUND_WRITES_S`` (spec §4.9: 1 day), never sooner
  than ``ECHO_WINDOW_SECONDS``: the echo check (LP-1) reads only rows inside that window;
* published ``ingress_outbox`` rows after ``RETENTION_OUTBOX_PUBLISHED_S`` (the stream and
  the event tables hold them; unpublished and refused rows stay for the drain or an operator);
* the payloads of finished (``done``, ``dead``) events after ``RETENTION_EVENT_PAYLOADS_DAYS``:
  the status row stays (dedupe, history, counts), its ``payload_json`` becomes ``{}`` (the
  column is NOT NULL) and ``payload_raw`` NULL. Pending, failing and quarantined events keep
  theirs: a rule or an operator still needs them;
* ``payload_raw`` (the signed GHL bytes, kept for the Verity forward F-1) of GHL events received
  more than ``RETENTION_PAYLOAD_RAW_FORWARDED_S`` ago once verity-sync's delivery is done and
  F-1 recorded the forward: no consumer reads the raw bytes after that (the parsed
  ``payload_json`` serves every rule and re-drive).

A value of 0 keeps that kind for ever. Every statement touches at most ``PURGE_BATCH_SIZE``
rows, chosen through an index and ``FOR UPDATE SKIP LOCKED``, and commits on its own: a large
backlog is many short transactions, never a table locked for minutes nor a row a running
rule holds. The payload passes walk the rows in ``received_at, id`` order from where the
previous batch ended, so rows emptied earlier are read once per run, not once per batch.
Counted in ``dfm_purged_rows_total{table}``; a run that deletes is one ``reconcile_runs`` row
(``job_name='purge'``); ``dry_run`` only counts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import PurgeRequested
from services.infra.db.models import ReconcileRunRow
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

PURGED = Counter("dfm_purged_rows_total", "Rows the retention purge deleted or emptied", ["table"])
LAST_SUCCESS = Gauge("dfm_purge_last_success_timestamp_seconds", "When a retention purge last finished")
EVENT_TABLES = ("webhook_events", "texting_webhook_events", "broadcast_webhook_events")
FINISHED = ("done", "dead")
_START = (datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=0))  # keyset before every row


@dataclass(frozen=True)
class _Delete:
    """Rows of ``table`` whose ``column`` is older than the cutoff, deleted by primary key."""

    table: str
    column: str

    def count_sql(self) -> str:
        return f"SELECT count(*) FROM {self.table} WHERE {self.column} < :cutoff"

    def batch_sql(self) -> str:
        return (
            f"DELETE FROM {self.table} WHERE id IN (SELECT id FROM {self.table} "
            f"WHERE {self.column} < :cutoff LIMIT :n FOR UPDATE SKIP LOCKED)"
        )


@dataclass(frozen=True)
class _Empty:
    """Finished events' payloads (``raw_only``: the forwarded raw bytes), walked by keyset."""

    table: str
    raw_only: bool = False

    def _where(self, status: str | None) -> str:
        if self.raw_only:  # any status: the event may still be running other consumers' rules
            return (
                "e.payload_raw IS NOT NULL AND EXISTS (SELECT 1 FROM event_deliveries d "
                "WHERE d.event_id = e.id AND d.consumer = 'verity-sync' AND d.status = 'done') "
                "AND EXISTS (SELECT 1 FROM sync_log s WHERE s.correlation_id = e.id::text "
                "AND s.rule = 'F-1' AND s.status = 'success')"
            )
        emptied = "e.payload_json <> '{}'::jsonb"
        if self.table == "webhook_events":
            emptied = f"({emptied} OR e.payload_raw IS NOT NULL)"
        return f"e.status = '{status}' AND {emptied}"

    def statuses(self) -> tuple[str | None, ...]:
        # one pass per status: each walks the (status, received_at) index in order
        return (None,) if self.raw_only else FINISHED

    def count_sql(self, status: str | None) -> str:
        return f"SELECT count(*) FROM {self.table} e WHERE e.received_at < :cutoff AND {self._where(status)}"

    def batch_sql(self, status: str | None) -> str:
        if self.raw_only:
            changes = "payload_raw = NULL"
        elif self.table == "webhook_events":
            changes = "payload_json = '{}'::jsonb, payload_raw = NULL"
        else:
            changes = "payload_json = '{}'::jsonb"
        return (
            f"UPDATE {self.table} SET {changes} WHERE id IN (SELECT e.id FROM {self.table} e "
            "WHERE e.received_at >= :after_at AND e.received_at < :cutoff "
            f"AND (e.received_at, e.id) > (:after_at, :after_id) AND {self._where(status)} "
            "ORDER BY e.received_at, e.id LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING received_at, id"
        )


@dataclass(frozen=True)
class Target:
    """One kind of row the purge removes, under its report and metric name."""

    name: str
    age: timedelta | None  # None: kept for ever (the setting is 0)
    action: _Delete | _Empty


def targets(settings: Settings) -> list[Target]:
    """Every kind of row the purge handles, with the age its setting gives."""

    def age(seconds: float) -> timedelta | None:
        return timedelta(seconds=seconds) if seconds > 0 else None

    day = 86_400
    writes = settings.retention_outbound_writes_s
    out = [
        Target("sync_log", age(settings.retention_sync_log_days * day), _Delete("sync_log", "started_at")),
        Target(
            "event_attempts",
            age(settings.retention_event_attempts_days * day),
            _Delete("event_attempts", "finished_at"),
        ),
        # the echo check reads this window: purging inside it would let our own writes come back
        Target(
            "outbound_writes",
            age(max(writes, settings.echo_window_seconds)) if writes else None,
            _Delete("outbound_writes", "written_at"),
        ),
        Target("ingress_outbox", age(settings.retention_outbox_published_s), _Delete("ingress_outbox", "published_at")),
    ]
    payloads = age(settings.retention_event_payloads_days * day)
    for table in EVENT_TABLES:
        out.append(Target(f"{table}.payload", payloads, _Empty(table)))
        if table == "webhook_events":
            out.append(
                Target(
                    f"{table}.payload_raw",
                    age(settings.retention_payload_raw_forwarded_s),
                    _Empty(table, raw_only=True),
                )
            )
    return out


@dataclass
class PurgeReport:
    """Rows purged (or, in a dry run, that would be) per target."""

    command_id: str
    dry_run: bool
    tables: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, str | None] = field(default_factory=dict)
    batches: int = 0
    duration_ms: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.tables.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "commandId": self.command_id,
            "dryRun": self.dry_run,
            "tables": self.tables,
            "cutoffs": self.cutoffs,
            "batches": self.batches,
            "durationMs": round(self.duration_ms, 1),
        }


class Purger:
    """Applies the retention ages against one database."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine

    async def run(
        self, command: PurgeRequested, progress: Callable[[str, int], Awaitable[None]] | None = None
    ) -> PurgeReport:
        """One purge (or count, with ``dry_run``); ``progress`` hears each target's total."""
        started = time.perf_counter()
        report = PurgeReport(str(command.command_id), command.dry_run)
        run_id = None if command.dry_run else await self._start(command)
        try:
            async with self.engine.connect() as conn:
                now: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()  # the database's clock
            for target in targets(self.settings):
                cutoff = now - target.age if target.age is not None else None
                report.cutoffs[target.name] = cutoff.isoformat() if cutoff else None
                count = (
                    0
                    if cutoff is None
                    else (
                        await self._count(target, cutoff)
                        if command.dry_run
                        else await self._purge(target, cutoff, report)
                    )
                )
                report.tables[target.name] = count
                if progress is not None:
                    await progress(target.name, count)
        except Exception as exc:
            report.duration_ms = (time.perf_counter() - started) * 1000
            if run_id is not None:
                await self._finish(run_id, "error", report, command.slot, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        report.duration_ms = (time.perf_counter() - started) * 1000
        if run_id is not None:
            await self._finish(run_id, "success", report, command.slot, None)
            LAST_SUCCESS.set_to_current_time()
        log.info(
            "purge_done",
            dry_run=command.dry_run,
            slot=command.slot,
            tables=report.tables,
            batches=report.batches,
            duration_ms=round(report.duration_ms, 1),
        )
        return report

    async def _count(self, target: Target, cutoff: datetime) -> int:
        action = target.action
        async with self.engine.connect() as conn:
            if isinstance(action, _Delete):
                return int((await conn.execute(text(action.count_sql()), {"cutoff": cutoff})).scalar_one())
            return sum(
                [
                    int((await conn.execute(text(action.count_sql(s)), {"cutoff": cutoff})).scalar_one())
                    for s in action.statuses()
                ]
            )

    async def _purge(self, target: Target, cutoff: datetime, report: PurgeReport) -> int:
        """Batches until one comes back short; each its own transaction."""
        n = self.settings.purge_batch_size
        action = target.action
        total = 0
        if isinstance(action, _Delete):
            while True:
                async with self.engine.begin() as conn:
                    done = (await conn.execute(text(action.batch_sql()), {"cutoff": cutoff, "n": n})).rowcount
                report.batches += 1
                total += done
                PURGED.labels(target.name).inc(done)
                if done < n:
                    return total
        for status in action.statuses():
            after_at, after_id = _START
            while True:
                async with self.engine.begin() as conn:
                    rows = (
                        await conn.execute(
                            text(action.batch_sql(status)),
                            {"cutoff": cutoff, "n": n, "after_at": after_at, "after_id": after_id},
                        )
                    ).all()
                report.batches += 1
                total += len(rows)
                PURGED.labels(target.name).inc(len(rows))
                if len(rows) < n:
                    break
                after_at, after_id = max((r.received_at, r.id) for r in rows)
        return total

    async def _start(self, command: PurgeRequested) -> Any:
        async with self.engine.begin() as conn:
            return (
                await conn.execute(
                    insert(ReconcileRunRow)
                    .values(
                        job_name="purge",
                        status="running",
                        totals={
                            "slot": command.slot,
                            "commandId": str(command.command_id),
                            "requestedBy": command.requested_by,
                        },
                    )
                    .returning(ReconcileRunRow.id)
                )
            ).scalar_one()

    async def _finish(self, run_id: Any, status: str, report: PurgeReport, slot: str | None, error: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ReconcileRunRow)
                .where(ReconcileRunRow.id == run_id)
                .values(
                    status=status,
                    finished_at=func.now(),
                    error_message=error,
                    totals={**report.as_json(), "slot": slot},
                )
            )
