"""Console pages on a large history: 1,000,000 webhook events (and a delivery per event, an
attempt and a sync_log row per fifth one) in a scratch database, then the console's own pages
timed through its ASGI app, signed in (session check, query, template): the events list's first
page, a filtered page, a keyset page deep in history, a search on an id, and an event page with
its timeline. p50/p99 over repeated requests; the queries behind the slow ones are EXPLAINed.

Issue #19: "with 1,000,000 events in the table, the events list and an event page answer in
well under a second".

Usage: python bench/console/run.py [--events 1000000] [--repeat 50] [--database-url URL] [--keep] [--record]
(--database-url names a server on which a scratch database is created; default: an embedded one)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from services.console.app import create_console_app
from services.console.auth import hash_password
from services.infra.db import migrate
from services.infra.db.session import sync_url
from services.infra.settings import Settings
from services.tooling.embedded import EmbeddedPostgres
from services.tooling.operations import Cursor
from tests.conftest import create_database, drop_database

PASSWORD = "bench-password-1"
# 1M events over 30 days (one each 2.6 s), 2/3 GHL and 1/3 Aloware, 0.5 % dead, 1 % error,
# 200,000 contacts; the newest first in the list, as the console asks for them
FILL_EVENTS = """
INSERT INTO webhook_events (id, received_at, source, event_type, event_token, canonical_type, entity_type,
    entity_id, location_id, payload_json, dedupe_key, status, outcome, processed_at, attempts, stream_seq,
    error_message)
SELECT md5('bench' || g)::uuid, now() - interval '30 days' + g * interval '2.592 seconds',
       CASE WHEN g % 3 = 0 THEN 'aloware' ELSE 'ghl' END,
       CASE WHEN g % 3 = 0 THEN 'Contact Updated' ELSE 'ContactUpdate' END,
       CASE WHEN g % 3 = 0 THEN 'contact_updated' ELSE 'contact_update' END,
       'contact.updated', 'contact',
       CASE WHEN g % 3 = 0 THEN (9000000 + g % 200000)::text ELSE 'ghlC' || lpad((g % 200000)::text, 16, '0') END,
       'ghlLocationDemo00001',
       jsonb_build_object('type', 'ContactUpdate', 'id', g, 'email', 'p' || g || '@example.com',
                          'phone', '+1555' || lpad((g % 10000000)::text, 7, '0'), 'firstName', 'Person'),
       'bench:' || g,
       CASE WHEN g % 200 = 7 THEN 'dead' WHEN g % 100 = 3 THEN 'error' ELSE 'done' END,
       CASE WHEN g % 200 = 7 OR g % 100 = 3 THEN NULL ELSE 'applied' END,
       now() - interval '30 days' + g * interval '2.592 seconds' + interval '180 milliseconds',
       1 + (g % 3), g,
       CASE WHEN g % 200 = 7 THEN 'retry budget spent: aloware 502' WHEN g % 100 = 3 THEN 'aloware 502' END
FROM generate_series(1, $1) g"""
FILL_DELIVERIES = """
INSERT INTO event_deliveries (event_id, consumer, event_table, status, attempts, updated_at)
SELECT id, 'aloware-sync', 'webhook', CASE WHEN status IN ('done', 'dead', 'error') THEN status ELSE 'done' END,
       attempts, processed_at
FROM webhook_events"""
FILL_ATTEMPTS = """
INSERT INTO event_attempts (event_id, consumer, attempt, stream_seq, num_delivered, started_at, finished_at, status,
                            detail, vendor_calls, mappings)
SELECT id, 'aloware-sync', 1, stream_seq, 1, received_at + interval '20 milliseconds', processed_at,
       CASE WHEN status = 'done' THEN 'done' ELSE 'error' END, NULL,
       jsonb_build_array(
         jsonb_build_object('vendor', 'aloware', 'method', 'GET', 'path', '/webhook/contact/phone-number',
                            'status', '200', 'ms', 41.5, 'at', received_at),
         jsonb_build_object('vendor', 'aloware', 'method', 'POST', 'path', '/webhook/forms',
                            'status', '200', 'ms', 88.0, 'at', received_at)),
       jsonb_build_array(jsonb_build_object('kind', 'contact', 'action', 'upsert', 'ghl', entity_id))
FROM webhook_events WHERE stream_seq % 5 = 0"""
FILL_SYNC_LOG = """
INSERT INTO sync_log (direction, entity_type, entity_id, source_id, target_id, status, started_at, finished_at,
                      correlation_id, rule, attempt)
SELECT 'ghl_to_aloware', 'contact', entity_id, entity_id, NULL, 'success', received_at, processed_at, id::text,
       'CG-3', 1
FROM webhook_events WHERE stream_seq % 5 = 0"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def seed(url: str, events: int) -> None:
    conn = await asyncpg.connect(sync_url(url))
    try:
        for name, sql, args in (
            ("events", FILL_EVENTS, (events,)),
            ("deliveries", FILL_DELIVERIES, ()),
            ("attempts", FILL_ATTEMPTS, ()),
            ("sync_log", FILL_SYNC_LOG, ()),
        ):
            started = time.perf_counter()
            await conn.execute(sql, *args)
            print(f"  seeded {name} in {time.perf_counter() - started:.1f} s", flush=True)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def explain(url: str, sql: str, *args: Any) -> str:
    conn = await asyncpg.connect(sync_url(url))
    try:
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql, *args)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


async def timed(client: httpx.AsyncClient, path: str, repeat: int, check: str) -> dict[str, float]:
    first = await client.get(path)  # warm: the plan cache and the pool
    assert first.status_code == 200 and check in first.text, (path, first.status_code, first.text[:500])
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200
    return {"p50": pct(samples, 50), "p99": pct(samples, 99), "max": max(samples), "mean": statistics.fmean(samples)}


async def measure(url: str, repeat: int) -> dict[str, dict[str, float]]:
    settings = Settings(
        database_url=url,
        console_operators=f"bench:{hash_password(PASSWORD, n=1024)}",
        console_session_secret="b" * 40,
        log_level="warning",
    )
    app = create_console_app(settings)
    conn = await asyncpg.connect(sync_url(url))
    try:
        deep = await conn.fetchrow(
            "SELECT received_at, id FROM webhook_events ORDER BY received_at DESC, id DESC OFFSET $1 LIMIT 1",
            int(await conn.fetchval("SELECT count(*) FROM webhook_events") * 0.9),
        )
        total = int(await conn.fetchval("SELECT count(*) FROM webhook_events"))
        # an event half-way back in history that has an attempt and a sync_log row
        event = await conn.fetchrow(
            "SELECT id, entity_id FROM webhook_events WHERE stream_seq % 5 = 0 "
            "ORDER BY received_at DESC LIMIT 1 OFFSET $1",
            total // 10,
        )
    finally:
        await conn.close()
    cursor = Cursor(deep["received_at"], deep["id"], "desc").encode()
    pages = {
        "events list, first page (50, newest first)": ("/events", "event-link"),
        "events list, filtered (source=aloware, status=dead)": ("/events?source=aloware&status=dead", "event-link"),
        "events list, keyset page 90 % deep": (f"/events?cursor={cursor}", "event-link"),
        "events list, search by entity id": (f"/events?q={event['entity_id']}", "event-link"),
        "events list, search by event id": (f"/events?q={event['id']}", "event-link"),
        "event page with its timeline": (f"/events/{event['id']}", 'id="timeline"'),
    }
    results: dict[str, dict[str, float]] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.bench") as client:
        page = await client.get("/signin")
        token = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
        assert token
        signin = await client.post(
            "/signin", data={"username": "bench", "password": PASSWORD, "csrf_token": token.group(1)}
        )
        assert signin.status_code == 303, signin.text
        for name, (path, check) in pages.items():
            results[name] = await timed(client, path, repeat, check)
            r = results[name]
            print(f"  {name:<55} p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms", flush=True)
    await app.state.console.engine.dispose()
    return results


def record(args: argparse.Namespace, results: dict[str, dict[str, float]], plans: dict[str, str]) -> None:
    lines = [
        "",
        f"## Console pages on 1,000,000 events (issue #19), {datetime.now(UTC):%Y-%m-%d}",
        "",
        f"`python bench/console/run.py --events {args.events} --repeat {args.repeat}`"
        + (" --database-url <local PostgreSQL>`" if args.database_url else "`"),
        f"on {platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with "
        f"other engineers' test suites, Python {platform.python_version()}, PostgreSQL "
        f"{'server at --database-url' if args.database_url else 'embedded (pgserver)'}. Each request goes through "
        "the console's ASGI app in process, signed in (session row check, the query, the Jinja2 page), "
        f"{args.repeat} times after one warm-up. Seeded: {args.events:,} webhook_events over 30 days, one "
        "event_deliveries row each, an event_attempts and a sync_log row for every fifth.",
        "",
        "| page | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |" for name, r in results.items()],
        "",
    ]
    for name, plan in plans.items():
        lines += [f"Plan of {name}:", "", "```", plan, "```", ""]
    with (ROOT / "bench" / "RESULTS.md").open("a") as out:
        out.write("\n".join(lines))


async def main(args: argparse.Namespace) -> None:
    server = None
    root = args.database_url
    if root is None:
        server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="dfm-bench-console-")), delete_on_stop=True).start()
        root = server.url()
    url = await create_database(root)
    try:
        await asyncio.to_thread(migrate.upgrade, url, "head")
        print(f"seeding {args.events:,} events", flush=True)
        await seed(url, args.events)
        results = await measure(url, args.repeat)
        conn = await asyncpg.connect(sync_url(url))
        try:
            entity = await conn.fetchval(
                "SELECT entity_id FROM webhook_events ORDER BY received_at DESC LIMIT 1 OFFSET $1", args.events // 2
            )
        finally:
            await conn.close()
        deep = await asyncpg.connect(sync_url(url))
        try:
            at, ident = await deep.fetchrow(
                "SELECT received_at, id FROM webhook_events ORDER BY received_at DESC OFFSET $1 LIMIT 1",
                args.events * 9 // 10,
            )
        finally:
            await deep.close()
        plans = {
            "the keyset page 90 % deep": await explain(
                url,
                """
                SELECT id FROM webhook_events WHERE received_at <= $1 AND (received_at < $1 OR (received_at = $1
                AND id < $2)) ORDER BY received_at DESC, id DESC LIMIT 51""",
                at,
                ident,
            ),
            "the search by entity id": await explain(
                url,
                """
                SELECT id FROM webhook_events WHERE dedupe_key = $1 OR entity_id = $1
                ORDER BY received_at DESC, id DESC LIMIT 51""",
                entity,
            ),
            "the filtered page": await explain(
                url,
                """
                SELECT id FROM webhook_events WHERE source = 'aloware' AND status = 'dead'
                ORDER BY received_at DESC, id DESC LIMIT 51""",
            ),
        }
        for name, plan in plans.items():
            print(f"\n{name}:\n{plan}")
        if args.record:
            record(args, results, plans)
    finally:
        if not args.keep:
            await drop_database(root, url)
        else:
            print(f"kept {url}")
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--record", action="store_true", help="append the numbers to bench/RESULTS.md")
    asyncio.run(main(parser.parse_args()))
