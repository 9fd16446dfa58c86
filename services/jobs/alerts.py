"""Alert checks (spec/inbound.md §7.3), run by the jobs service on the scheduler's clock.

Each check reads PostgreSQL through indexed columns and yields a level (or none). An
incident is a row in ``alert_incidents`` while its condition holds: opening it (or raising
its level) sends one JSON POST to ``ALERT_WEBHOOK_URL``, clearing it sends one recovery
message; checks in between send nothing. The unique open-incident index makes that true with
several jobs replicas. A notification that could not be delivered is retried at the next
check. Without ``ALERT_WEBHOOK_URL`` alerts are only logged.

Thresholds are the spec's; the same thresholds exist as Prometheus rules in
``deploy/prometheus/alerts.yml``. Auth failures per source are counted only in the
ingress's metrics, so that condition is a Prometheus rule only.

The backlog, the oldest pending event and the reinstall flag describe the whole database,
not this process, so every jobs replica computes and exports them (``StateGauges``, every
``DFM_STATE_GAUGES_INTERVAL_S``; the consumer lag the same way from the stream) and the rules
and dashboards take their ``max`` across replicas, never their ``sum``: with KEDA at three
replicas a sum counts every pending event three times. ``REPLICATED_GAUGES`` names them;
tests/unit/test_alert_rules.py keeps every expression that reads one aggregating it with max/min.
Every replica rather than one elected exporter: no election to lose or split, a replica that
goes away simply stops being scraped, and the figures never gap while another takes over.

Besides the thresholds, the specific alerts of spec/outbound.md §2.6: an OAuth installation
that needs a reinstall (OA-6), mapping conflicts (CA-7) and conversation-provider
configuration errors (G12), the last two read from the causes the consumers record on the
failed attempts' ``sync_log`` rows (services/infra/delivery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import Gauge
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.db.models import AlertIncidentRow
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

# the same value on every jobs replica (the whole database): aggregate with max, never sum
PENDING = Gauge(
    "dfm_events_pending", "Events not finished, per table and status (every jobs replica: use max)", ["table", "status"]
)
OLDEST = Gauge(
    "dfm_event_oldest_pending_age_seconds", "Age of the oldest pending event (every jobs replica: use max)", ["table"]
)
REINSTALL = Gauge(
    "dfm_ghl_oauth_reinstall_needed",
    "GHL locations whose OAuth installation needs a reinstall (every jobs replica: use max)",
)
REPLICATED_GAUGES = (
    "dfm_events_pending",
    "dfm_event_oldest_pending_age_seconds",
    "dfm_ghl_oauth_reinstall_needed",
    # the lag of every durable, read from the stream (services/jobs/service.py)
    "dfm_consumer_pending_messages",
    "dfm_consumer_ack_pending_messages",
    "dfm_consumer_redelivered_messages",
)
STATUSES = ("pending", "processing", "error", "dead")
CAUSE_WINDOW = "15 minutes"  # like dead events: a failure that stops recurring clears its alert
TABLES = {"webhook": "webhook_events", "texting": "texting_webhook_events", "broadcast": "broadcast_webhook_events"}
MIN_SAMPLE = 20  # rates over fewer events than this are not judged (one failure of 3 is noise)


@dataclass(frozen=True)
class Finding:
    """A check's verdict: ``level`` None means the condition does not hold."""

    key: str
    title: str
    level: str | None
    message: str
    value: float | None = None


def _level(value: float, critical: float | None, warning: float | None) -> str | None:
    if critical is not None and value > critical:
        return "critical"
    if warning is not None and value > warning:
        return "warning"
    return None


async def _scalar(conn: AsyncConnection, sql: str) -> Any:
    return (await conn.execute(text(sql))).scalar()


@dataclass(frozen=True)
class Backlog:
    """Unfinished events per table: counts by status, and the oldest pending one's age."""

    counts: dict[str, dict[str, int]]
    oldest_s: dict[str, float]

    @property
    def pending(self) -> int:
        return sum(c.get("pending", 0) for c in self.counts.values())

    @property
    def oldest_age_s(self) -> float:
        return max(self.oldest_s.values(), default=0.0)

    def export(self) -> None:
        """Set the backlog gauges to these figures."""
        for table, counts in self.counts.items():
            for status in STATUSES:
                PENDING.labels(table, status).set(counts.get(status, 0))
            OLDEST.labels(table).set(self.oldest_s[table])


async def read_backlog(conn: AsyncConnection) -> Backlog:
    """The backlog of every event table, through the status index."""
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    for table, name in TABLES.items():
        rows = (
            await conn.execute(
                text(
                    f"SELECT status, count(*) FROM {name} WHERE status IN "
                    "('pending','processing','error','dead') GROUP BY status"
                )
            )
        ).all()
        counts[table] = {r[0]: int(r[1]) for r in rows}
        age = await _scalar(
            conn, f"SELECT extract(epoch FROM now() - min(received_at)) FROM {name} WHERE status = 'pending'"
        )
        oldest[table] = float(age or 0)
    return Backlog(counts, oldest)


async def reinstall_locations(conn: AsyncConnection) -> list[str]:
    """GHL locations whose OAuth installation must be made again (OA-6)."""
    rows = await conn.execute(
        text("SELECT location_id FROM ghl_oauth_tokens WHERE needs_reinstall ORDER BY location_id")
    )
    return [r[0] for r in rows.all()]


class StateGauges:
    """Keeps this replica's gauges of the whole database (and, through ``streams``, of the
    stream) fresh on its own clock, every ``interval_s``: the alert check runs on one replica
    only, and a replica exporting what it saw at its last check would hold a stale figure
    up in every ``max``. While PostgreSQL does not answer, the backlog series are withdrawn
    rather than left at their last value."""

    def __init__(
        self, engine: AsyncEngine, interval_s: float, streams: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._streams = streams
        self._failing = False

    async def refresh(self) -> None:
        """Read and export every figure once."""
        try:
            async with self._engine.connect() as conn:
                backlog = await read_backlog(conn)
                locations = await reinstall_locations(conn)
        except (SQLAlchemyError, OSError) as exc:
            PENDING.clear()
            OLDEST.clear()
            if not self._failing:
                log.warning("state_gauges_unavailable", error=type(exc).__name__)
            self._failing = True
        else:
            backlog.export()
            REINSTALL.set(len(locations))
            if self._failing:
                log.info("state_gauges_available")
            self._failing = False
        if self._streams is not None:
            await self._streams()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Refresh in the background for the duration of the block."""
        task = asyncio.create_task(self._every_interval(), name="state-gauges")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _every_interval(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)


async def check_pending(conn: AsyncConnection) -> list[Finding]:
    """Backlog size and processing delay; also refreshes the backlog gauges."""
    backlog = await read_backlog(conn)
    backlog.export()
    total, oldest_age = backlog.pending, backlog.oldest_age_s
    return [
        Finding("pending_events", "Pending events backlog", _level(total, 1000, 500), f"{total} events pending", total),
        Finding(
            "processing_delay",
            "Processing delay",
            _level(oldest_age, None, 600),
            f"oldest pending event is {oldest_age:.0f} s old",
            oldest_age,
        ),
    ]


async def check_error_rates(conn: AsyncConnection) -> list[Finding]:
    """Webhook event error rate and sync error rate over the last five minutes."""
    received = failed = 0
    for name in TABLES.values():
        row = (
            await conn.execute(
                text(
                    f"SELECT count(*), count(*) FILTER (WHERE status IN ('error','dead')) FROM {name} "
                    "WHERE received_at >= now() - interval '5 minutes'"
                )
            )
        ).one()
        received, failed = received + int(row[0]), failed + int(row[1])
    sync = (
        await conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE status = 'error') FROM sync_log "
                "WHERE started_at >= now() - interval '5 minutes'"
            )
        )
    ).one()
    calls = (
        await conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE c->>'status' = 'error' OR c->>'status' >= '500' "
                "OR c->>'status' = '429') FROM event_attempts a, jsonb_array_elements(a.vendor_calls) c "
                "WHERE a.finished_at >= now() - interval '5 minutes'"
            )
        )
    ).one()
    findings = []
    for key, title, (n, bad), crit, warn in (
        ("webhook_error_rate", "Webhook event error rate", (received, failed), 0.05, 0.01),
        ("sync_error_rate", "Sync error rate", (int(sync[0]), int(sync[1])), 0.05, None),
        ("vendor_failure_rate", "Vendor API failure rate", (int(calls[0]), int(calls[1])), 0.10, None),
    ):
        rate = bad / n if n else 0.0
        level = _level(rate, crit, warn) if n >= MIN_SAMPLE else None
        findings.append(Finding(key, title, level, f"{bad} of {n} failed in 5 min ({rate:.1%})", rate))
    return findings


async def check_latency_and_dead(conn: AsyncConnection) -> list[Finding]:
    """p95 accepted→done over five minutes, recent dead events, a stuck outbox, outbox rows
    the stream refused."""
    p95 = await _scalar(
        conn,
        (
            "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM a.finished_at - e.received_at)) "
            "FROM event_attempts a JOIN webhook_events e ON e.id = a.event_id "
            "WHERE a.finished_at >= now() - interval '5 minutes' AND a.status = 'done'"
        ),
    )
    dead = 0
    for name in TABLES.values():
        dead += int(
            await _scalar(
                conn,
                f"SELECT count(*) FROM {name} WHERE status = 'dead' AND last_error_at >= now() - interval '15 minutes'",
            )
            or 0
        )
    outbox_age = float(
        await _scalar(
            conn,
            (
                "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM ingress_outbox "
                "WHERE published_at IS NULL AND failed_at IS NULL"
            ),
        )
        or 0
    )
    outbox_failed = int(await _scalar(conn, ("SELECT count(*) FROM ingress_outbox WHERE failed_at IS NOT NULL")) or 0)
    p95_s = float(p95 or 0)
    return [
        Finding(
            "latency_p95",
            "Event latency p95",
            _level(p95_s, None, 5.0),
            f"p95 accepted→done {p95_s:.1f} s over 5 min",
            p95_s,
        ),
        Finding(
            "dead_events",
            "Dead events",
            "warning" if dead else None,
            f"{dead} events became dead in the last 15 min",
            dead,
        ),
        Finding(
            "outbox_stuck",
            "Ingress outbox not draining",
            _level(outbox_age, None, 300),
            f"oldest outbox row waits {outbox_age:.0f} s",
            outbox_age,
        ),
        # accepted events the stream refused: each got a 2xx, so an operator must look
        Finding(
            "outbox_failed",
            "Outbox rows the stream refused",
            "critical" if outbox_failed else None,
            f"{outbox_failed} accepted events could not be published (GET /api/admin/outbox/failed)",
            outbox_failed,
        ),
    ]


async def check_specific_failures(conn: AsyncConnection) -> list[Finding]:
    """OAuth reinstall needed (while any location is flagged), mapping conflicts and provider
    misconfiguration (failed attempts with that cause in the last 15 minutes). Also refreshes
    the reinstall gauge."""
    locations = await reinstall_locations(conn)
    REINSTALL.set(len(locations))
    causes = {
        r[0]: int(r[1])
        for r in (
            await conn.execute(
                text(
                    "SELECT details->>'cause', count(*) FROM sync_log WHERE status = 'error' "
                    f"AND started_at >= now() - interval '{CAUSE_WINDOW}' "
                    "AND details->>'cause' IN ('mapping_conflict', 'provider_misconfigured') GROUP BY 1"
                )
            )
        ).all()
    }
    conflicts, misconfigured = causes.get("mapping_conflict", 0), causes.get("provider_misconfigured", 0)
    named = ", ".join(locations[:5]) + (" …" if len(locations) > 5 else "")
    return [
        Finding(
            "ghl_oauth_reinstall_needed",
            "GHL OAuth reinstall needed",
            "critical" if locations else None,
            f"{len(locations)} location(s) must install the Marketplace App again: {named}"
            if locations
            else "no location needs a reinstall",
            len(locations),
        ),
        Finding(
            "mapping_conflicts",
            "Contact mapping conflicts",
            "warning" if conflicts else None,
            f"{conflicts} sync attempts hit a mapping conflict in the last 15 min "
            "(dfm events list --status dead; the mapping was not overwritten)",
            conflicts,
        ),
        Finding(
            "provider_misconfigured",
            "Conversation provider misconfigured",
            "critical" if misconfigured else None,
            f"{misconfigured} sync attempts failed on the provider configuration in the last 15 min "
            "(GHL_CONVERSATION_PROVIDER_ID, the app's token, VERITY_API_KEY)",
            misconfigured,
        ),
    ]


CHECKS: tuple[Callable[[AsyncConnection], Awaitable[list[Finding]]], ...] = (
    check_pending,
    check_error_rates,
    check_latency_and_dead,
    check_specific_failures,
)
LEVELS = {"warning": 1, "critical": 2}


class Alerter:
    """Evaluates the checks and notifies once per incident."""

    def __init__(self, settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.http = http or httpx.AsyncClient(timeout=10)
        self._db_down_notified = False

    async def aclose(self) -> None:
        await self.http.aclose()

    async def check(self) -> list[Finding]:
        """Run every check once; returns the findings (holding or not)."""
        try:
            async with self.engine.connect() as conn:
                findings = [f for check in CHECKS for f in await check(conn)]
        except (SQLAlchemyError, OSError) as exc:
            finding = Finding(
                "database",
                "Database unreachable",
                "critical",
                f"alert checks cannot reach PostgreSQL: {type(exc).__name__}",
            )
            if not self._db_down_notified:
                self._db_down_notified = await self._send(finding, resolved=False)
            return [finding]
        if self._db_down_notified:
            await self._send(
                Finding("database", "Database unreachable", None, "PostgreSQL reachable again"), resolved=True
            )
            self._db_down_notified = False
        for finding in findings:
            await self._track(finding)
        return findings

    async def _track(self, f: Finding) -> None:
        async with self.engine.begin() as conn:
            if f.level is None:
                resolved = (
                    await conn.execute(
                        update(AlertIncidentRow)
                        .where(AlertIncidentRow.key == f.key, AlertIncidentRow.resolved_at.is_(None))
                        .values(resolved_at=datetime.now(UTC))
                        .returning(AlertIncidentRow.id, AlertIncidentRow.notified_open)
                    )
                ).first()
                if resolved is None:
                    return
                if resolved.notified_open and await self._send(f, resolved=True):
                    await conn.execute(
                        update(AlertIncidentRow)
                        .where(AlertIncidentRow.id == resolved.id)
                        .values(notified_resolved=True)
                    )
                return
            opened = (
                await conn.execute(
                    insert(AlertIncidentRow)
                    .values(key=f.key, level=f.level, title=f.title, message=f.message, value=f.value)
                    .on_conflict_do_nothing(index_elements=["key"], index_where=AlertIncidentRow.resolved_at.is_(None))
                    .returning(AlertIncidentRow.id)
                )
            ).first()
            if opened is not None:
                incident_id, notify = opened.id, True
            else:
                row = (
                    await conn.execute(
                        select(AlertIncidentRow.__table__)
                        .where(AlertIncidentRow.key == f.key, AlertIncidentRow.resolved_at.is_(None))
                        .with_for_update()
                    )
                ).first()
                if row is None:
                    return
                incident_id = row.id
                escalated = LEVELS[f.level] > LEVELS[row.level]
                notify = escalated or not row.notified_open
                await conn.execute(
                    update(AlertIncidentRow)
                    .where(AlertIncidentRow.id == row.id)
                    .values(
                        last_seen_at=datetime.now(UTC),
                        value=f.value,
                        message=f.message,
                        level=f.level if escalated else row.level,
                    )
                )
            if notify and await self._send(f, resolved=False):
                await conn.execute(
                    update(AlertIncidentRow).where(AlertIncidentRow.id == incident_id).values(notified_open=True)
                )

    async def _send(self, f: Finding, *, resolved: bool) -> bool:
        """POST the alert (the original's shape); True when delivered or only logged."""
        body = {
            "level": "info" if resolved else f.level,
            "title": f"Resolved: {f.title}" if resolved else f.title,
            "message": f.message,
            "timestamp": datetime.now(UTC).isoformat(),
            "metadata": {"key": f.key, "value": f.value, "resolved": resolved, "service": "df-middleware"},
        }
        log.warning("alert_resolved" if resolved else "alert_raised", key=f.key, level=body["level"], message=f.message)
        if not self.settings.alert_webhook_url:
            return True
        try:
            response = await self.http.post(self.settings.alert_webhook_url, json=body)
        except httpx.HTTPError as exc:
            log.warning("alert_delivery_failed", key=f.key, error=type(exc).__name__)
            return False
        if response.status_code >= 300:
            log.warning("alert_delivery_failed", key=f.key, status=response.status_code)
            return False
        return True
