"""Sync benchmark: Aloware contact events through the ingress, NATS, ghl-sync and the
sandbox GHL, with rate limiting off. Reports events/s, vendor API calls per event and
accepted→done latency (event row ``processed_at − received_at``; the rule marks an event
done right after its last vendor write).

The mix is update-heavy: N contacts are created, then each gets U updates (a new first
name each time) sent in order. Every process runs as it would in production
(`dfm run ...`), on embedded NATS and PostgreSQL.

Usage: python bench/sync/run.py [--contacts 100] [--updates 4] [--replicas 1] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ingress.run import cpu_seconds, wait_http
from bench.procs import Processes
from services.infra.broker import prepare_topology
from services.infra.db import migrate
from services.infra.db.session import sync_url
from services.infra.settings import Settings
from services.infra.signing import basic_auth, generate_ed25519, private_pem, public_pem
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres, free_port

PASSWORD = "bench:pass"


def contact_event(n: int, version: int, base: datetime) -> bytes:
    return json.dumps(
        {
            "event": "Contact Created" if version == 0 else "Contact Updated",
            "body": {
                "id": str(9_000_000 + n),
                "first_name": f"N{n}v{version}",
                "last_name": f"Bench{n}",
                "phone_number": f"+1555{n:07d}",
                "email": f"bench{n}@example.com",
                "timezone": "America/Chicago",
                "updated_at": (base + timedelta(seconds=version)).isoformat(),
            },
        }
    ).encode()


async def drive(ingress: str, sandbox: str, db_url: str, contacts: int, updates: int) -> dict[str, float]:
    base = datetime.now(UTC)
    auth = {"authorization": basic_auth("aloware", PASSWORD)}
    total = contacts * (updates + 1)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=ingress, timeout=30, limits=httpx.Limits(max_connections=16)) as client:
        sem = asyncio.Semaphore(16)
        for version in range(updates + 1):

            async def send(n: int, v: int = version) -> None:
                async with sem:
                    response = await client.post(
                        "/api/webhooks/aloware", content=contact_event(n, v, base), headers=auth
                    )
                    response.raise_for_status()

            await asyncio.gather(*(send(n) for n in range(contacts)))
    conn = await asyncpg.connect(sync_url(db_url))
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            finished = await conn.fetchval(
                "SELECT count(*) FROM webhook_events WHERE source='aloware' AND status IN ('done','dead')"
            )
            if finished >= total:
                break
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        stats = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE status='done') AS done,
                      count(*) FILTER (WHERE status='dead') AS dead,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p99,
                      max(extract(epoch FROM processed_at - received_at)) AS pmax
               FROM webhook_events WHERE source='aloware'"""
        )
        outcomes = await conn.fetch(
            "SELECT outcome, count(*) FROM webhook_events WHERE source='aloware' GROUP BY outcome"
        )
    finally:
        await conn.close()
    calls = httpx.get(sandbox + "/_sandbox/calls").json()
    ghl = [c for c in calls if c["vendor"] == "ghl"]
    contacts_in_ghl = len(httpx.get(sandbox + "/_sandbox/ghl/contacts").json())
    return {
        "events": total,
        "elapsed": elapsed,
        "done": stats["done"],
        "dead": stats["dead"],
        "p50": stats["p50"] * 1000,
        "p99": stats["p99"] * 1000,
        "max": stats["pmax"] * 1000,
        "ghl_calls": len(ghl),
        "aloware_calls": len(calls) - len(ghl),
        "invalid": len([c for c in calls if c["status"] == 422]),
        "contacts_in_ghl": contacts_in_ghl,
        "outcomes": {r["outcome"]: r["count"] for r in outcomes},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=100)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=1, help="ghl-sync processes")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dfm-bench-sync-"))
    nats_server = EmbeddedNats(store_dir=work / "nats").start()
    pg = EmbeddedPostgres(work / "pg", delete_on_stop=True).start()
    key, _ = generate_ed25519()
    (work / "key.pem").write_text(private_pem(key))
    sandbox_port, ingress_port = free_port(), free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "DATABASE_URL": pg.url(),
        "LOG_LEVEL": "warning",
        "INGRESS_PORT": str(ingress_port),
        "SANDBOX_PORT": str(sandbox_port),
        "GHL_API_KEY": "sandbox-ghl-key",
        "GHL_LOCATION_ID": "ghlLocationDemo00001",
        "GHL_BASE_URL": f"http://127.0.0.1:{sandbox_port}/ghl",
        "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "ALOWARE_BASE_URL": f"http://127.0.0.1:{sandbox_port}/aloware/api/v1",
        "ALOWARE_WEBHOOK_BASIC_USER": "aloware",
        "ALOWARE_WEBHOOK_BASIC_PASS": PASSWORD,
        "DF_ADMIN_SECRET": "bench",
        "X_DF_JOBS_SECRET": "bench",
        "GHL_RATE_LIMIT_PER_10S": "1000000",
        "CONTACT_SOURCE_OF_TRUTH": "aloware",
        "DFM_GHL_SIGNING_KEY_FILE": str(work / "key.pem"),
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public_pem(key),
        "DFM_SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{ingress_port}",
    }

    processes = Processes(env)
    start = processes.start

    try:
        migrate.upgrade(pg.url())
        asyncio.run(prepare_topology(Settings(nats_url=nats_server.url)))
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/calls", start("sandbox"))
        httpx.post(f"http://127.0.0.1:{sandbox_port}/_sandbox/rate-limit", json={"per_10s": 10**9})
        for service in ("recorder", "aloware-sync", *["ghl-sync"] * args.replicas):
            start(service)
        wait_http(f"http://127.0.0.1:{ingress_port}/api/health", start("ingress"))
        time.sleep(2)  # consumers bind to their durables (no readiness endpoint yet)
        pids = processes.pids()
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        result = asyncio.run(
            drive(
                f"http://127.0.0.1:{ingress_port}",
                f"http://127.0.0.1:{sandbox_port}",
                pg.url(),
                args.contacts,
                args.updates,
            )
        )
        cpu = {name: cpu_seconds(p) - before[name] for name, p in pids.items()}
    finally:
        processes.stop_all()
        nats_server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate = result["events"] / result["elapsed"]
    per_event = (result["ghl_calls"] + result["aloware_calls"]) / result["events"]
    ghl_per_event = result["ghl_calls"] / result["events"]
    report = "\n".join(
        [
            f"### sync (Aloware → GHL contacts) — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- command: `python bench/sync/run.py --contacts {args.contacts} --updates {args.updates} "
            f"--replicas {args.replicas}`",
            f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
            "every process and the load on one host; sandbox vendors, rate limiting off",
            f"- mix: {args.contacts} contacts created, then {args.updates} updates each, in order",
            "",
            "| measurement | value |",
            "| --- | ---: |",
            f"| events | {result['events']} ({result['done']} done, {result['dead']} dead; outcomes {result['outcomes']}) |",
            f"| throughput, first send → last done | {rate:,.0f} events/s |",
            f"| vendor API calls per event (GHL + Aloware) | {per_event:.2f} (GHL {ghl_per_event:.2f}) |",
            f"| accepted → done latency p50 / p99 / max | {result['p50']:.0f} / {result['p99']:.0f} / {result['max']:.0f} ms |",
            f"| contacts in GHL at the end / invalid requests | {result['contacts_in_ghl']} / {result['invalid']} |",
            f"| CPU seconds | {', '.join(f'{k} {v:.1f}' for k, v in cpu.items())} |",
            "",
        ]
    )
    print(report)
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write("\n" + report)
    ok = result["dead"] == 0 and result["invalid"] == 0 and result["contacts_in_ghl"] == args.contacts
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
