"""What the overview page shows: events by source and status over a window, a throughput /
errors / p95 chart, the outbox, dead letters and open alert incidents. Plain reads of
PostgreSQL (each on an index of ``received_at``, ``recorded_at`` or a partial one), shaped
for the template; the durables' lag comes from NATS (``CommandBus.consumer_lag``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["WINDOWS", "Chart", "overview"]

Window = Literal["hour", "day"]
# window → (length, bucket width)
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "hour": (timedelta(hours=1), timedelta(minutes=5)),
    "day": (timedelta(days=1), timedelta(hours=1)),
}

# every event table as (source, status, received_at, processed_at) rows
_EVENTS = """
    SELECT source, status, received_at, processed_at FROM webhook_events WHERE received_at >= :since
    UNION ALL
    SELECT 'texting', status, received_at, processed_at FROM texting_webhook_events WHERE received_at >= :since
    UNION ALL
    SELECT 'broadcast', status, received_at, processed_at FROM broadcast_webhook_events WHERE received_at >= :since
"""
BY_SOURCE = f"SELECT source, status, count(*) AS n FROM ({_EVENTS}) e GROUP BY source, status"
BUCKETS = f"""
    SELECT date_bin(make_interval(secs => :width), received_at, :since) AS bucket,
           count(*) AS received,
           count(*) FILTER (WHERE status IN ('error', 'dead')) AS errors,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at))
               FILTER (WHERE processed_at IS NOT NULL) AS p95_s
    FROM ({_EVENTS}) e GROUP BY 1 ORDER BY 1
"""
OUTBOX = """
    SELECT count(*) FILTER (WHERE published_at IS NULL AND failed_at IS NULL) AS waiting,
           count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
    FROM ingress_outbox WHERE published_at IS NULL
"""
DEAD_LETTERS = """
    SELECT recorded_at, stream, consumer, stream_seq, event_id, kind, reason
    FROM dead_letters WHERE recorded_at >= :since ORDER BY recorded_at DESC LIMIT 10
"""
DEAD_LETTER_COUNT = "SELECT count(*) FROM dead_letters WHERE recorded_at >= :since"
INCIDENTS = """
    SELECT key, level, title, message, value, opened_at, last_seen_at FROM alert_incidents
    WHERE resolved_at IS NULL ORDER BY opened_at DESC LIMIT 50
"""
STATUSES = ("pending", "processing", "done", "error", "dead", "quarantined")
SOURCES = ("ghl", "ghl_provider", "aloware", "texting", "broadcast")


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    received: int
    errors: int
    received_y: float
    errors_y: float
    label: str


@dataclass(frozen=True)
class Chart:
    """An inline SVG chart: a bar per bucket (received, errors over it) and the p95 line."""

    width: int
    height: int
    bars: list[Bar] = field(default_factory=list)
    p95_points: str = ""
    max_received: int = 0
    max_p95_s: float = 0.0

    @classmethod
    def build(
        cls,
        buckets: list[dict[str, Any]],
        since: datetime,
        length: timedelta,
        width: timedelta,
        size: tuple[int, int] = (600, 140),
    ) -> Chart:
        w, h = size
        count = max(1, int(length / width))
        by_start = {b["bucket"]: b for b in buckets}
        slot = w / count
        top = max([b["received"] for b in buckets] + [1])
        top_p95 = max([b["p95_s"] or 0.0 for b in buckets] + [0.0])
        bars: list[Bar] = []
        points: list[str] = []
        for i in range(count):
            start = since + i * width
            b = by_start.get(start, {"received": 0, "errors": 0, "p95_s": None})
            rh = h * b["received"] / top
            eh = h * b["errors"] / top
            bars.append(
                Bar(
                    round(i * slot + 1, 1),
                    round(max(slot - 2, 1), 1),
                    b["received"],
                    b["errors"],
                    round(h - rh, 1),
                    round(h - eh, 1),
                    start.strftime("%H:%M"),
                )
            )
            if b["p95_s"] is not None and top_p95 > 0:
                points.append(f"{round(i * slot + slot / 2, 1)},{round(h - h * b['p95_s'] / top_p95, 1)}")
        return cls(w, h, bars, " ".join(points), top if buckets else 0, round(top_p95, 3))


async def overview(engine: AsyncEngine, window: str, now: datetime | None = None) -> dict[str, Any]:
    """Everything the overview shows that PostgreSQL knows, for ``window`` (hour or day)."""
    length, width = WINDOWS.get(window, WINDOWS["hour"])
    now = now or datetime.now(UTC)
    # buckets aligned to their width, so a refresh keeps the bars where they were
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    since = now - length + width - (now - epoch) % width
    async with engine.connect() as conn:
        counts = (await conn.execute(text(BY_SOURCE), {"since": since})).mappings().all()
        buckets = [
            dict(r)
            for r in (await conn.execute(text(BUCKETS), {"since": since, "width": width.total_seconds()}))
            .mappings()
            .all()
        ]
        outbox = (await conn.execute(text(OUTBOX))).mappings().one()
        dead = [dict(r) for r in (await conn.execute(text(DEAD_LETTERS), {"since": since})).mappings().all()]
        dead_count = int(await conn.scalar(text(DEAD_LETTER_COUNT), {"since": since}) or 0)
        incidents = [dict(r) for r in (await conn.execute(text(INCIDENTS))).mappings().all()]
    table: dict[str, dict[str, int]] = {s: dict.fromkeys(STATUSES, 0) for s in SOURCES}
    for r in counts:
        table.setdefault(r["source"], dict.fromkeys(STATUSES, 0))[r["status"]] = int(r["n"])
    for b in buckets:
        b["received"], b["errors"] = int(b["received"]), int(b["errors"])
        b["p95_s"] = float(b["p95_s"]) if b["p95_s"] is not None else None
    totals = {s: sum(row[s] for row in table.values()) for s in STATUSES}
    p95s = [b["p95_s"] for b in buckets if b["p95_s"] is not None]
    return {
        "window": window if window in WINDOWS else "hour",
        "since": since,
        "by_source": table,
        "totals": totals,
        "received": sum(totals.values()),
        "chart": Chart.build(buckets, since, length, width),
        "worst_p95_s": max(p95s) if p95s else None,
        "outbox": {"waiting": int(outbox["waiting"]), "failed": int(outbox["failed"])},
        "dead_letters": dead,
        "dead_letter_count": dead_count,
        "incidents": incidents,
    }
