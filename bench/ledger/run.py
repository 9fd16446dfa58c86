"""Delivery bookkeeping benchmark: the CPU one delivery's ledger work costs a consumer.

Every sync consumer, for every message, runs ``DeliveryLedger.begin`` (the event row, the
claim, the event's aggregate) and ``DeliveryLedger.finish`` (the end state, its attempt row,
the aggregate) around the rule. This measures those two alone, sequentially, on a fresh
database of an embedded PostgreSQL: CPU seconds of this process per delivery (user+system,
which includes the socket sends) and wall time, for ``--events`` new events, each begun and
finished ``done`` with an attempt trace, as the consumer does.

``--at COMMIT`` runs the ledger (and the migrations) of that commit, exported with
``git archive`` into a temp dir, so a before/after pair runs on the same machine minutes
apart; the report names the commit.

Usage: python -m bench.ledger.run [--events 2000] [--at COMMIT] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _source(at: str | None, work: Path) -> tuple[Path, str]:
    """The source tree to import the ledger from, and the commit it is."""
    if at is None:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services", "migrations"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return ROOT, head.stdout.strip() + ("+dirty" if dirty else "")
    tree = work / "src"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", at], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    short = subprocess.run(["git", "rev-parse", "--short", at], cwd=ROOT, capture_output=True, text=True)
    return tree, short.stdout.strip()


async def _measure(events: int, database_url: str) -> dict[str, float]:
    from contracts.envelope import AuthInfo, WebhookEvent
    from contracts.subjects import EntityType, Source
    from services.infra.db.session import create_engine
    from services.infra.delivery import DeliveryLedger, Outcome
    from services.infra.settings import Settings
    from services.infra.trace import AttemptTrace

    settings = Settings(database_url=database_url)
    engine = create_engine(settings, pool_size=2)
    ledger = DeliveryLedger(engine, "ghl-sync", settings)

    def event(n: int) -> WebhookEvent:
        body = {"id": str(7_000_000 + n), "phone_number": f"+1555{n:07d}", "first_name": "Bench"}
        return WebhookEvent(
            source=Source.ALOWARE,
            event_name="Contact Created",
            event_type="contact_created",
            canonical_type="contact.created",
            entity_type=EntityType.CONTACT,
            entity_id=body["id"],
            dedupe_key=f"ledger-bench:{uuid.uuid4()}",
            auth=AuthInfo(method="basic", verified=True),
            payload={"event": "Contact Created", "body": body},
        )

    async def one(e: WebhookEvent, seq: int) -> None:
        claim = await ledger.begin(e, seq)
        assert claim.attempt == 1, claim
        trace = AttemptTrace(stream_seq=seq, num_delivered=1, replay_of=None)
        await ledger.finish(e, "done", outcome=Outcome("applied"), attempt=claim.attempt, trace=trace)

    try:
        for n in range(50):  # warm: the pool, prepared statements, SQLAlchemy's compiled cache
            await one(event(n), n + 1)
        batch = [event(n) for n in range(100, 100 + events)]
        cpu0, wall0 = _cpu(), time.perf_counter()
        for i, e in enumerate(batch):
            await one(e, 1000 + i)
        cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    finally:
        await engine.dispose()
    return {"cpu_ms": 1000 * cpu / events, "wall_ms": 1000 * wall / events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--at", default=None, metavar="COMMIT")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfm-ledger-bench-") as tmp:
        work = Path(tmp)
        tree, commit = _source(args.at, work)
        sys.path.insert(0, str(tree))
        os.chdir(tree)  # alembic.ini and migrations/ of that tree
        for name in [m for m in sys.modules if m.split(".")[0] in ("services", "contracts", "migrations")]:
            del sys.modules[name]
        embedded = importlib.import_module("services.tooling.embedded")
        migrate = importlib.import_module("services.infra.db.migrate")
        pg = embedded.EmbeddedPostgres(work / "pg", delete_on_stop=True).start()
        try:
            url = pg.url()
            migrate.upgrade(url)
            result = asyncio.run(_measure(args.events, url))
        finally:
            pg.stop()
    lines = [
        f"### ledger — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}",
        "",
        f"- command: `python -m bench.ledger.run --events {args.events}{f' --at {args.at}' if args.at else ''}`",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        "embedded PostgreSQL on a Unix socket, one delivery at a time",
        "",
        "| per delivery (begin + finish done, with its attempt row) | value |",
        "| --- | ---: |",
        f"| CPU of the consumer process | {result['cpu_ms']:.2f} ms |",
        f"| wall time | {result['wall_ms']:.2f} ms |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write("\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
