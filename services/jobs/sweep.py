"""The pending sweep (spec/inbound.md §4.4): steps S1–S5 over the three event tables.

Per table, in this order:

* S4 — ``error`` rows whose attempts reached ``RETRY_MAX_ATTEMPTS`` → ``dead``;
* S2 — ``processing`` rows claimed longer than ``SWEEP_STALE_PROCESSING_S`` ago →
  ``pending`` (the claim already counted the attempt), so S1 re-drives them at once;
* S1 — ``pending`` rows older than ``SWEEP_PENDING_MIN_AGE_S`` → re-driven;
* S3 — ``error`` rows whose ``next_attempt_at`` has passed → re-driven;

then S5 drains the ingress outbox. Each step takes at most ``JOBS_BATCH_SIZE`` rows, oldest
``received_at`` first, through the partial status indexes (no scan of ``done`` rows), with
``FOR UPDATE SKIP LOCKED`` so concurrent sweeps never take the same row. A re-driven row
gets ``next_attempt_at = now + SWEEP_PENDING_MIN_AGE_S`` so the next sweep leaves it to the
consumer unless it is still stuck by then. Every run is one ``reconcile_runs`` row
(``job_name='pending-sweep'``) with the counts per table and step.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from prometheus_client import Counter
from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.commands import SweepRequested
from contracts.streams import expected_consumers
from services.infra.db.models import (
    EVENT_TABLES,
    TABLE_NAMES,
    EventDeliveryRow,
    QuarantineEventRow,
    ReconcileRunRow,
    TableName,
)
from services.infra.logging import get_logger
from services.infra.outbox import NATS_ERRORS, drain_outbox
from services.infra.redrive import envelope_for, publish_redrive
from services.infra.settings import Settings

log = get_logger(__name__)

SWEEP_RUNS = Counter("dfm_sweep_runs_total", "Sweep steps run", ["table", "step"])
SWEEP_REDRIVEN = Counter("dfm_sweep_redriven_total", "Rows a sweep step acted on", ["table", "step"])


@dataclass
class SweepReport:
    """What one sweep did."""

    run_id: str
    command_id: str = ""
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    outbox: int = 0
    duration_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            **self.totals,
            "outbox": {"S5": self.outbox},
            "durationMs": round(self.duration_ms, 1),
            "commandId": self.command_id,
        }


class Sweeper:
    """Runs sweeps against one database and one JetStream context."""

    def __init__(self, settings: Settings, engine: AsyncEngine, js: JetStreamContext) -> None:
        self.settings = settings
        self.engine = engine
        self.js = js

    async def run(self, command: SweepRequested) -> SweepReport:
        """One sweep, recorded in ``reconcile_runs``."""
        started = time.perf_counter()
        async with self.engine.begin() as conn:
            run_id = (
                await conn.execute(
                    insert(ReconcileRunRow)
                    .values(
                        job_name="pending-sweep",
                        status="running",
                        totals={"slot": command.slot, "commandId": str(command.command_id)},
                    )
                    .returning(ReconcileRunRow.id)
                )
            ).scalar_one()
        report = SweepReport(str(run_id), str(command.command_id))
        try:
            for table in TABLE_NAMES:
                if table in command.tables:
                    report.totals[table] = await self._sweep_table(table, command, report.run_id)
            if "S5" in command.steps:
                report.outbox = await drain_outbox(
                    self.engine,
                    self.js,
                    limit=self.settings.jobs_batch_size,
                    publish_timeout=self.settings.dfm_publish_timeout,
                )
                SWEEP_RUNS.labels("outbox", "S5").inc()
                SWEEP_REDRIVEN.labels("outbox", "S5").inc(report.outbox)
        except Exception as exc:
            report.duration_ms = (time.perf_counter() - started) * 1000
            await self._finish(run_id, "error", report, command.slot, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        report.duration_ms = (time.perf_counter() - started) * 1000
        await self._finish(run_id, "success", report, command.slot, None)
        log.info("sweep_done", run_id=report.run_id, slot=command.slot, totals=report.as_json())
        return report

    async def _finish(self, run_id: Any, status: str, report: SweepReport, slot: str | None, error: str | None) -> None:
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

    # --- steps -----------------------------------------------------------------------------
    async def _sweep_table(self, table: TableName, command: SweepRequested, run_id: str) -> dict[str, int]:
        steps = command.steps
        counts: dict[str, int] = {}
        if "S4" in steps:
            counts["S4"] = await self._expire(table)
        if "S2" in steps:
            counts["S2"] = await self._unstick(table)
        if "S1" in steps:
            counts["S1"], counts["S1_unrouted"] = await self._redrive(table, "S1", command, run_id)
        if "S3" in steps:
            counts["S3"], _ = await self._redrive(table, "S3", command, run_id)
        for step in ("S4", "S2", "S1", "S3"):
            if step in counts:
                SWEEP_RUNS.labels(table, step).inc()
                SWEEP_REDRIVEN.labels(table, step).inc(counts[step])
        return counts

    def selection(self, table: TableName, step: str, command: SweepRequested | None = None) -> Any:
        """The locking SELECT of one step (also EXPLAINed by the tests: index scans only)."""
        model = EVENT_TABLES[table]
        now = datetime.now(UTC)
        if step == "S4":
            where = [model.status == "error", model.attempts >= self.settings.retry_max_attempts]
        elif step == "S2":
            cutoff = now - timedelta(seconds=self.settings.sweep_stale_processing_s)
            where = [model.status == "processing", model.claimed_at < cutoff]
        elif step == "S1":
            min_age = 0 if command and command.ignore_min_age else self.settings.sweep_pending_min_age_s
            where = [
                model.status == "pending",
                model.received_at < now - timedelta(seconds=min_age),
                (model.next_attempt_at.is_(None)) | (model.next_attempt_at <= now),
            ]
        else:
            where = [model.status == "error", model.next_attempt_at <= now]
        return self._candidates(table, where, model.received_at)

    def _candidates(self, table: TableName, where: list[Any], order: Any) -> Any:
        model = EVENT_TABLES[table]
        not_quarantined = ~exists().where(
            QuarantineEventRow.event_id == model.id, QuarantineEventRow.released_at.is_(None)
        )
        return (
            select(model)
            .where(*where, not_quarantined)
            .order_by(order)
            .limit(self.settings.jobs_batch_size)
            .with_for_update(skip_locked=True)
        )

    async def _expire(self, table: TableName) -> int:
        """S4: error rows whose budget is spent → dead (with their deliveries)."""
        model = EVENT_TABLES[table]
        max_attempts = self.settings.retry_max_attempts
        async with self.engine.begin() as conn:
            rows = (await conn.execute(self.selection(table, "S4"))).all()
            if not rows:
                return 0
            ids = [r.id for r in rows]
            reason = func.concat("retry budget spent: ", func.coalesce(model.error_message, "unknown error"))
            await conn.execute(
                update(model)
                .where(model.id.in_(ids))
                .values(status="dead", error_message=reason, next_attempt_at=None, last_error_at=func.now())
            )
            await conn.execute(
                update(EventDeliveryRow)
                .where(
                    EventDeliveryRow.event_id.in_(ids),
                    EventDeliveryRow.status == "error",
                    EventDeliveryRow.attempts >= max_attempts,
                )
                .values(status="dead", next_attempt_at=None, updated_at=func.now())
            )
        log.warning("sweep_marked_dead", table=table, count=len(ids))
        return len(ids)

    async def _unstick(self, table: TableName) -> int:
        """S2: claims older than the stale limit go back to pending (attempt counted)."""
        model = EVENT_TABLES[table]
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.sweep_stale_processing_s)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(self.selection(table, "S2"))).all()
            if not rows:
                return 0
            ids = [r.id for r in rows]
            await conn.execute(
                update(model).where(model.id.in_(ids)).values(status="pending", claimed_at=None, next_attempt_at=None)
            )
            await conn.execute(
                update(EventDeliveryRow)
                .where(
                    EventDeliveryRow.event_id.in_(ids),
                    EventDeliveryRow.status == "processing",
                    EventDeliveryRow.claimed_at < cutoff,
                )
                .values(status="pending", updated_at=func.now())
            )
        log.warning("sweep_unstuck_processing", table=table, count=len(ids))
        return len(ids)

    async def _redrive(self, table: TableName, step: str, command: SweepRequested, run_id: str) -> tuple[int, int]:
        """S1 (pending, old enough) or S3 (error, due): publish again; (re-driven, unrouted)."""
        model = EVENT_TABLES[table]
        guard = datetime.now(UTC) + timedelta(seconds=max(60, self.settings.sweep_pending_min_age_s))
        async with self.engine.begin() as conn:
            rows = (await conn.execute(self.selection(table, step, command))).all()
            if not rows:
                return 0, 0
            events = [await envelope_for(self.js, table, row) for row in rows]
            routed = [(row, ev) for row, ev in zip(rows, events, strict=True) if expected_consumers(ev.subject)]
            unrouted = [row.id for row, ev in zip(rows, events, strict=True) if not expected_consumers(ev.subject)]
            if unrouted:
                await self._mark_unrouted(conn, table, unrouted, events)
            results = await asyncio.gather(
                *(
                    publish_redrive(self.js, ev, f"sweep:{run_id}", self.settings.dfm_publish_timeout)
                    for _, ev in routed
                ),
                return_exceptions=True,
            )
            sent = [
                row.id
                for (row, _), result in zip(routed, results, strict=True)
                if not isinstance(result, BaseException)
            ]
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed and not isinstance(failed[0], NATS_ERRORS):
                raise failed[0]
            if sent:
                await conn.execute(update(model).where(model.id.in_(sent)).values(next_attempt_at=guard))
        if failed:
            log.warning(
                "sweep_publish_failed", table=table, step=step, failed=len(failed), error=type(failed[0]).__name__
            )
        if sent:
            log.info("sweep_redriven", table=table, step=step, count=len(sent), run_id=run_id)
        return len(sent), len(unrouted)

    async def _mark_unrouted(self, conn: AsyncConnection, table: TableName, ids: list[Any], events: list[Any]) -> None:
        """Pending rows no consumer takes (recorded before their type lost its rule): done,
        ignored, as the recorder would record them now."""
        model = EVENT_TABLES[table]
        names = {ev.event_id: ev.event_name for ev in events}
        for event_id in ids:
            await conn.execute(
                update(model)
                .where(model.id == event_id)
                .values(
                    status="done",
                    outcome="ignored",
                    processed_at=func.now(),
                    next_attempt_at=None,
                    outcome_reason=f"Unhandled event type: {names.get(event_id, '?')}",
                )
            )
