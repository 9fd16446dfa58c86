"""The overview: events by source and status over the window, the chart's buckets, consumer
lag per durable (from NATS), outbox depth, dead letters and open alert incidents, and the
panel htmx reloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.streams import CONSUMERS
from services.console.overview import overview
from services.infra.db.session import create_engine
from tests.console.rig import console_client, console_settings, execute, insert_event, signed_in


async def seed(database: str) -> None:
    now = datetime.now(UTC)
    for n, status in enumerate(("done", "done", "done", "error", "dead")):
        await insert_event(database, entity_id=f"o{n}", status=status, received_at=now - timedelta(minutes=10 + n))
    await insert_event(
        database,
        source="aloware",
        event_type="contact_updated",
        entity_id="a1",
        status="done",
        received_at=now - timedelta(minutes=3),
    )
    await insert_event(database, entity_id="old", status="dead", received_at=now - timedelta(hours=5))
    await execute(
        database, "UPDATE webhook_events SET processed_at = received_at + interval '2 seconds' WHERE status = 'done'"
    )
    await execute(
        database,
        "INSERT INTO alert_incidents (key, level, title, message, value) "
        "VALUES ('dead_letters', 'critical', 'Dead letters piling up', '3 in 10 minutes', 3)",
    )
    await execute(
        database,
        "INSERT INTO alert_incidents (key, level, title, message, resolved_at) "
        "VALUES ('old', 'warning', 'Resolved long ago', 'x', now())",
    )
    await execute(
        database,
        "INSERT INTO dead_letters (stream, consumer, stream_seq, subject, kind, deliveries, reason) "
        "VALUES ('WEBHOOKS', 'aloware-sync', 41, 'webhooks.ghl.contact.contact_update', 'max_deliveries', "
        "11, 'JetStream stopped redelivering after 11 deliveries to aloware-sync')",
    )
    await execute(
        database,
        "INSERT INTO ingress_outbox (subject, dedupe_key, headers, body) "
        "VALUES ('webhooks.ghl.contact.contact_update', 'k1', '{}'::jsonb, '\\x7b7d'::bytea)",
    )


async def test_the_overview_counts_the_window_and_shows_lag_outbox_dead_letters_and_incidents(
    base_env: dict[str, str],
) -> None:
    database = base_env["DATABASE_URL"]
    await seed(database)
    async with console_client(console_settings(base_env)) as client:
        await signed_in(client)
        page = (await client.get("/overview")).text
        day = (await client.get("/overview/panel", params={"window": "day"})).text
    assert 'id="received-count">6<' in page  # the event 5 hours old is outside the hour
    assert 'id="received-count">7<' in day
    table = page[page.index('id="by-source"') : page.index('id="lag"')]
    for status, count in (("done", 3), ("error", 1), ("dead", 1)):
        assert f'href="/events?source=ghl&status={status}">{count}</a>' in table, status
    assert 'href="/events?source=aloware&status=done">1</a>' in table
    assert "Dead letters piling up" in page and "Resolved long ago" not in page
    assert "JetStream stopped redelivering after 11 deliveries" in page
    assert "1 / 0" in page  # outbox: one waiting, none failed
    lag = page[page.index('id="lag"') :]
    assert all(f"<td>{c.durable}</td>" in lag for c in CONSUMERS)
    assert 'hx-trigger="every 5s"' in page and "<svg" in page and "<polyline" in page


async def test_the_chart_has_a_bar_per_bucket_with_errors_and_the_p95(base_env: dict[str, str]) -> None:
    database = base_env["DATABASE_URL"]
    await seed(database)
    engine = create_engine(console_settings(base_env), pool_size=1)
    try:
        hour = await overview(engine, "hour")
        day = await overview(engine, "day")
    finally:
        await engine.dispose()
    assert len(hour["chart"].bars) == 12 and len(day["chart"].bars) == 24
    assert sum(b.received for b in hour["chart"].bars) == 6
    assert sum(b.errors for b in hour["chart"].bars) == 2
    assert sum(b.received for b in day["chart"].bars) == 7
    assert hour["worst_p95_s"] is not None and abs(hour["worst_p95_s"] - 2.0) < 0.01
    assert hour["totals"]["dead"] == 1 and day["totals"]["dead"] == 2
    assert hour["outbox"] == {"waiting": 1, "failed": 0} and hour["dead_letter_count"] == 1
    assert [i["title"] for i in hour["incidents"]] == ["Dead letters piling up"]
