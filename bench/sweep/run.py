"""Sweep cost: one pending sweep over a table holding 1,000,000 ``done`` events and 1,000
stuck ones (pending past the age threshold, processing past the stale limit, error due),
spec/inbound.md §4.4 "well under a second with millions of done rows".

Runs the jobs service's real ``Sweeper`` against a fresh database (embedded PostgreSQL, or
``--database-url`` naming a server on which a database is created) and an embedded
nats-server. Each sweep takes up to ``JOBS_BATCH_SIZE`` (100) rows per step, so several
sweeps run back to back until nothing is left; every one is timed. Raw limits measured in
the same run: the bare index-only selection of one step, and publishing the same number of
messages to JetStream with nothing else around it.

Usage: python bench/sweep/run.py [--done 1000000] [--stuck 1000] [--database-url URL] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from contracts.commands import SweepRequested
from services.infra.broker import connect, ensure_topology
from services.infra.db import migrate
from services.infra.db.session import create_engine, sync_url
from services.infra.settings import Settings
from services.jobs.sweep import Sweeper
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres
from tests.conftest import create_database, drop_database

FILL_DONE = """
INSERT INTO webhook_events (received_at, source, event_type, event_token, canonical_type, entity_type,
    entity_id, payload_json, dedupe_key, status, outcome, processed_at, attempts)
SELECT now() - interval '30 days' + g * interval '2 seconds', 'aloware', 'Contact Updated', 'contact_updated',
       'contact.updated', 'contact', (9000000 + g % 50000)::text,
       jsonb_build_object('event', 'Contact Updated', 'body', jsonb_build_object('id', (9000000 + g % 50000)::text)),
       'bench:done:' || g, 'done', 'applied', now(), 1
FROM generate_series(1, $1) g"""
FILL_STUCK = """
INSERT INTO webhook_events (received_at, source, event_type, event_token, canonical_type, entity_type,
    entity_id, payload_json, dedupe_key, status, attempts, claimed_at, next_attempt_at, error_message)
SELECT now() - interval '1 hour' + g * interval '1 millisecond', 'aloware', 'Contact Updated', 'contact_updated',
       'contact.updated', 'contact', (8000000 + g)::text,
       jsonb_build_object('event', 'Contact Updated', 'body', jsonb_build_object('id', (8000000 + g)::text)),
       'bench:stuck:' || g, (ARRAY['pending', 'processing', 'error'])[g % 3 + 1], 1 + g % 3,
       now() - interval '2 hours', now() - interval '1 minute', 'bench'
FROM generate_series(1, $1) g"""


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dfm-bench-sweep-"))
    nats = EmbeddedNats(store_dir=tmp / "nats").start()
    pg = None
    root = args.database_url
    if root is None:
        pg = EmbeddedPostgres(tmp / "pg", delete_on_stop=True).start()
        root = pg.url()
    url = await create_database(root)
    try:
        await asyncio.to_thread(migrate.upgrade, url, "head")
        conn = await asyncpg.connect(sync_url(url))
        started = time.perf_counter()
        await conn.execute(FILL_DONE, args.done)
        await conn.execute(FILL_STUCK, args.stuck)
        await conn.execute("ANALYZE webhook_events")
        fill_s = time.perf_counter() - started
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('webhook_events'))")
        settings = Settings(database_url=url, nats_url=nats.url, retry_max_attempts=11)
        nc = await connect(settings, name="bench-sweep")
        js = nc.jetstream()
        await ensure_topology(js, settings)
        engine = create_engine(settings)
        sweeper = Sweeper(settings, engine, js)

        # raw limits: the bare selection of one step, and publishing a batch with nothing else
        sql = str(
            sweeper.selection("webhook", "S1").compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        ).replace(" FOR UPDATE SKIP LOCKED", "")
        select_ms = []
        for _ in range(5):
            t = time.perf_counter()
            await conn.fetch(sql)
            select_ms.append((time.perf_counter() - t) * 1000)
        payload = b"x" * 600
        t = time.perf_counter()
        await asyncio.gather(*(js.publish("webhooks.bench.raw.publish", payload) for _ in range(300)))
        publish_300_ms = (time.perf_counter() - t) * 1000
        await js.purge_stream("WEBHOOKS")

        runs = []
        while True:
            report = await sweeper.run(SweepRequested(requested_by="bench"))
            acted = sum(v for t in report.totals.values() for k, v in t.items() if k != "S1_unrouted")
            runs.append((report.duration_ms, acted, report.totals["webhook"]))
            if acted == 0:
                break
        left = await conn.fetchval(
            "SELECT count(*) FROM webhook_events WHERE status IN ('pending','processing','error') "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
        )
        await conn.close()
        await engine.dispose()
        await nc.close()
    finally:
        await drop_database(root, url)
        if pg is not None:
            pg.stop()
        nats.stop()

    busy = [ms for ms, acted, _ in runs if acted]
    lines = [
        f"### sweep — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python bench/sweep/run.py --done {args.done} --stuck {args.stuck}"
        + (" --database-url …`" if args.database_url else "`")
        + f" (PostgreSQL {'server' if args.database_url else 'embedded pgserver'})",
        f"- machine: {_machine()}",
        f"- table: {args.done:,} done + {args.stuck:,} stuck rows in webhook_events ({size}); filled in {fill_s:.0f} s",
        "",
        "| sweep | rows acted on | duration ms | S4 | S2 | S1 | S3 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, (ms, acted, t) in enumerate(runs, 1):
        lines.append(
            f"| {i} | {acted} | {ms:.0f} | {t.get('S4', 0)} | {t.get('S2', 0)} | {t.get('S1', 0)} | {t.get('S3', 0)} |"
        )
    lines += [
        "",
        f"Busy sweeps: median {statistics.median(busy):.0f} ms, max {max(busy):.0f} ms; "
        f"the idle sweep at the end {runs[-1][0]:.0f} ms. Stuck rows left due: {left}.",
        f"Raw limits, same run: bare S1 selection (index scan, 100 rows) median "
        f"{statistics.median(select_ms):.1f} ms; 300 JetStream publishes in flight together {publish_300_ms:.0f} ms.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n" + text)


def _machine() -> str:
    import os

    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        "PostgreSQL, nats-server and the sweeper on the same host"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--done", type=int, default=1_000_000)
    parser.add_argument("--stuck", type=int, default=1_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    asyncio.run(main(parser.parse_args()))
