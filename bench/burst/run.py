"""Burst benchmark (issue #18): N new Aloware contacts at once against a sandbox GHL that
enforces GHL's 100 requests / 10 s, with Aloware calls, inbound texts and STOPs arriving
during the drain.

The stack runs as real processes (``dfm run``: sandbox, recorder, ghl-sync × --replicas,
aloware-sync, verity-sync, ingress) on an embedded nats-server and PostgreSQL. Before the
burst, --warm contacts are created through the ingress and drained; the real-time events are
about them, so their latency is the lane's, not a new contact's creation. Then the N
``Contact Created`` webhooks (unique ids, phones and e-mails) are sent as fast as the ingress
takes them (32 in flight; a 429/503 or a dropped connection is sent again, as Aloware would),
and from the same moment one real-time event every --realtime-every seconds (kinds in turn by
--mix) until the last contact event is finished in the database.

Every webhook carries its own W3C ``traceparent``; the ingress continues that trace and every
GHL request the event causes carries it, so the sandbox's request log
(``/_sandbox/calls?vendor=ghl``: method, path, status, ``at`` = when the sandbox answered)
says which event caused which request. A *write* is a non-GET request answered 2xx.

Figures:
  drain           first contact accepted (ingress 2xx) → the last contact's last GHL write
  lower bound     N / 10 s: N contacts, one GHL request each, at 100 requests / 10 s
  ratio           drain / lower bound (target ≤ 1.3 at N = 2,000)
  GHL requests per event, by class (contact, call, text, stop): every GHL request (any
                  status, reads included) carrying the event's trace, / accepted events of the
                  class; "unattributed" are requests no sent event caused (echo handling, sweeps)
  429s            GHL requests the sandbox answered 429 during the load (target 0)
  real-time latency p50 / p99 / max: a call's, text's or STOP's ingress 2xx → the last GHL
                  write its trace caused (target p99 ≤ 5 s); events with no write are counted
  ingress accepted/s: the contacts accepted per second while the burst was sent
Ledger (balanced = all of these hold; exit status 1 otherwise):
  every accepted event has its webhook_events / texting_webhook_events row in a terminal
  state (done, quarantined; dead counts as unbalanced), none missing; one GHL contact per
  phone sent (none missing, none twice: sandbox state); zero OpenAPI violations (GHL requests
  the sandbox answered 422, and its ``sandbox_invalid_request`` log lines).
Raw limits, same run and servers, before the load (3 s each, GHL limit lifted): JetStream
acked publish, PostgreSQL single-row insert, sandbox GHL duplicate searches answered per second.

--at COMMIT runs the services from that commit, exported with ``git archive`` into the run's
temp dir (its migrations and topology too), so a before/after pair is reproducible while the
working tree changes; the report names the commit (``+dirty`` for an edited working tree).

--lifted lifts GHL's limit in the sandbox and in ghl-sync (GHL_RATE_LIMIT_PER_10S=1000000):
the drain is then the stack's own speed. Without it ghl-sync runs with its configured budget
(the project's default, as in production) against the sandbox's 100 / 10 s.

Usage: python -m bench.burst.run [--contacts 300] [--realtime-every 2] [--mix call,text,stop]
                                 [--replicas 2] [--warm W] [--lifted] [--at COMMIT]
                                 [--timeout S] [--json] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.burst.figures import (
    CLASSES,
    Sent,
    drain,
    endpoints,
    latencies,
    new_trace,
    percentile,
    requests_per_event,
    status_counts,
    traceparent,
)
from bench.e2e.run import raw_limits, settle_all
from bench.ingress.run import cpu_seconds, wait_http
from bench.procs import VERITY_SECRET, Processes, stack_env
from services.clients.ghl_oauth import sign_state
from services.infra.db.session import sync_url
from services.infra.settings import Settings
from services.infra.signing import generate_ed25519, private_pem, public_pem
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.tooling.sender import sign

SECRET = VERITY_SECRET
REALTIME = ("call", "text", "stop")
TERMINAL = ("done", "dead", "quarantined")
IN_FLIGHT = 32
GHL_LIMIT_PER_10S = 100  # GHL's, the sandbox's default


def contact_body(n: int) -> dict[str, Any]:
    """An Aloware ``Contact Created`` like tests/fixtures/webhooks/aloware/contact-created.json,
    new to GHL (no external ids), with its own id, phone and e-mail."""
    at = datetime.now(UTC).isoformat()
    return {
        "event": "Contact Created",
        "body": {
            "id": str(8_000_000 + n),
            "company_id": "4200",
            "first_name": f"Burst{n}",
            "last_name": "Bench",
            "name": f"Burst{n} Bench",
            "phone_number": phone(n),
            "email": f"burst{n}@example.com",
            "timezone": "America/Chicago",
            "lead_source": "Bench",
            "intake_source": "api",
            "disposition_status": None,
            "is_dnc": False,
            "is_blocked": False,
            "text_authorized": True,
            "country": "US",
            "state": "TX",
            "city": "Austin",
            "user_id": "3100",
            "tags": [],
            "created_at": at,
            "updated_at": at,
        },
    }


def phone(n: int) -> str:
    return f"+1555{n:07d}"


def realtime_body(kind: str, seq: int, warm: int, nth: int = 0) -> tuple[str, dict[str, Any]]:
    """(source, body) of real-time event ``seq``, the ``nth`` of its kind, about a warm contact
    (numbered from 0; burst contacts after them): calls and texts ``seq % warm``, STOPs ``nth %
    warm``, so each STOP opts out a number not yet opted out while there are warm contacts left
    (a second STOP from a number already carrying the opt-out tags writes nothing to GHL)."""
    n = (nth if kind == "stop" else seq) % warm
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if kind == "call":  # like tests/fixtures/webhooks/aloware/call-disposed.json
        return "aloware", {
            "event": "Call Disposed",
            "body": {
                "id": str(9_800_000 + seq),
                "contact_id": str(8_000_000 + n),
                "user_id": "3100",
                "direction": "outbound",
                "type": "call",
                "disposition": "Interested",
                "status": "completed",
                "resolution": "answered",
                "duration": 60,
                "talk_time": 55,
                "wait_time": 5,
                "hold_time": 0,
                "lead_number": phone(n),
                "incoming_number": "+15555550100",
                "created_at": now,
                "ended_at": now,
            },
        }
    body = {  # like tests/fixtures/webhooks/texting/message.received.json and optout.stop.json
        "eventType": "message.received" if kind == "text" else "optout.stop",
        "messageId": f"burst-{kind}-{seq}",
        "conversationId": f"burst-chat-{n}",
        "direction": "inbound",
        "from": phone(n),
        "to": "+15555550100",
        "body": f"burst hello {seq}" if kind == "text" else "STOP",
        "timestamp": now,
        "status": "received",
    }
    return "texting", body


class Sender:
    """Posts signed webhooks to the ingress, each with its own trace, and keeps what it sent."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.sent: list[Sent] = []
        self.resends = 0

    async def send(self, kind: str, source: str, body: dict[str, Any]) -> Sent:
        raw = json.dumps(body).encode()
        request = sign(self.settings, source, raw)
        trace = new_trace()
        sent_at = time.time()
        status, data = 0, {}
        for attempt in range(8):
            if attempt:
                self.resends += 1
                await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
            try:
                answer = await self.client.post(
                    request.path,
                    content=raw,
                    headers={**request.headers, "traceparent": traceparent(trace)},
                    params=request.params,
                )
            except httpx.HTTPError:
                status = 0
                continue
            status = answer.status_code
            data = answer.json() if status == 200 else {}
            if status not in (429, 503):
                break
        accepted = status == 200 and data.get("status") == "accepted"
        record = Sent(
            trace, kind, status, data.get("status"), data.get("id"), sent_at, time.time() if accepted else None
        )
        self.sent.append(record)
        return record


async def terminal(conn: asyncpg.Connection, ids: list[str]) -> dict[str, str]:
    """The status of each event in ``ids`` that has a row (both event tables)."""
    rows = await conn.fetch(
        "SELECT id::text, status FROM webhook_events WHERE id = ANY($1::uuid[]) "
        "UNION ALL SELECT id::text, status FROM texting_webhook_events WHERE id = ANY($1::uuid[])",
        ids,
    )
    return {r["id"]: r["status"] for r in rows}


async def dead_reasons(db: str, ids: list[str]) -> list[str]:
    """Why the sent events that ended dead did (their rows' last error), so an unbalanced ledger
    says what to look at."""
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "SELECT e.canonical_type, e.entity_id, e.error_message, "
            "(SELECT string_agg(d.consumer || ': ' || coalesce(d.last_error, '?'), '; ') FROM event_deliveries d "
            "WHERE d.event_id = e.id AND d.status = 'dead') AS why "
            "FROM webhook_events e WHERE e.id = ANY($1::uuid[]) AND e.status = 'dead'",
            ids,
        )
    finally:
        await conn.close()
    return [f"{r['canonical_type']} {r['entity_id']}: {r['error_message']} ({r['why']})" for r in rows]


async def wait_finished(db: str, ids: list[str], timeout: float, what: str) -> dict[str, str]:
    conn = await asyncpg.connect(sync_url(db))
    try:
        deadline, note = time.monotonic() + timeout, time.monotonic() + 15
        while True:
            states = await terminal(conn, ids)
            finished = sum(1 for s in states.values() if s in TERMINAL)
            if finished == len(ids) or time.monotonic() > deadline:
                return states
            if time.monotonic() > note:
                print(f"{what}: {finished} of {len(ids)} finished", file=sys.stderr)
                note += 15
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def warm_up(base: str, settings: Settings, db: str, warm: int) -> list[Sent]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        sender = Sender(client, settings)
        await asyncio.gather(*(sender.send("warm", "aloware", contact_body(n)) for n in range(warm)))
    ids = [s.event_id for s in sender.sent if s.event_id]
    await wait_finished(db, ids, timeout=300, what="warm-up")
    return sender.sent


async def burst(
    base: str, settings: Settings, db: str, args: argparse.Namespace
) -> tuple[list[Sent], dict[str, float], int]:
    """Send the N contacts as fast as the ingress takes them and the real-time events alongside
    until every contact event is finished (or --timeout); then wait for the real-time ones."""
    limits = httpx.Limits(max_connections=IN_FLIGHT + 8, max_keepalive_connections=IN_FLIGHT + 8)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        sender = Sender(client, settings)
        drained = asyncio.Event()
        kinds = itertools.cycle(args.mix)
        began = time.time()

        async def contacts() -> None:
            queue = iter(range(args.warm, args.warm + args.contacts))

            async def worker() -> None:
                for n in queue:
                    await sender.send("contact", "aloware", contact_body(n))

            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))

        async def realtime() -> None:
            tasks: list[asyncio.Task[Sent]] = []
            nth: Counter[str] = Counter()
            for seq in itertools.count():
                kind = next(kinds)
                body = realtime_body(kind, seq, args.warm, nth[kind])
                nth[kind] += 1
                tasks.append(asyncio.create_task(sender.send(kind, *body)))
                try:
                    await asyncio.wait_for(drained.wait(), timeout=args.realtime_every)
                    break
                except TimeoutError:
                    continue
            await asyncio.gather(*tasks)

        async def watch(sending: asyncio.Task[None]) -> None:
            await sending
            ids = [s.event_id for s in sender.sent if s.kind == "contact" and s.event_id]
            await wait_finished(db, ids, timeout=args.timeout, what="drain")
            drained.set()

        sending = asyncio.create_task(contacts())
        await asyncio.gather(watch(sending), realtime())
        sent_contacts = [s for s in sender.sent if s.kind == "contact"]
        timing = {
            "send_s": max(s.accepted_at or s.sent_at for s in sent_contacts) - began,
            "began": began,
        }
    rt_ids = [s.event_id for s in sender.sent if s.kind in REALTIME and s.event_id]
    await wait_finished(db, rt_ids, timeout=120, what="real-time")
    return sender.sent, timing, sender.resends


async def ledger_rows(db: str, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(sync_url(db))
    try:
        return await terminal(conn, ids)
    finally:
        await conn.close()


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} cores (nproc), {platform.machine()}, {model}, Python {platform.python_version()}"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def stack_tree(at: str | None, work: Path) -> tuple[Path, str]:
    """Where the services run from, and its commit: ``at`` exported with ``git archive`` (other
    people's edits in the working tree then change nothing mid-run), else the working tree, whose
    label says ``+dirty`` when services, contracts or migrations have uncommitted edits."""
    if at is None:
        dirty = git("status", "--porcelain", "--", "services", "contracts", "migrations")
        return ROOT, git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    commit = git("rev-parse", "--short", at)
    tree = work / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, commit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=300, help="N: new Aloware contacts sent at once")
    parser.add_argument(
        "--realtime-every", type=float, default=2.0, help="seconds between real-time events during the drain"
    )
    parser.add_argument(
        "--mix",
        type=lambda v: [k.strip() for k in v.split(",") if k.strip()],
        default=list(REALTIME),
        help="real-time kinds in turn, comma-separated from call,text,stop (repeat one to weight it)",
    )
    parser.add_argument("--replicas", type=int, default=2, help="ghl-sync processes sharing its durable")
    parser.add_argument(
        "--warm",
        type=int,
        default=None,
        help="contacts created before the burst; real-time events are about them (default: 20, or one per STOP "
        "expected within the target drain of 1.3 × N/10 s when more)",
    )
    parser.add_argument("--lifted", action="store_true", help="GHL limit lifted in the sandbox and in ghl-sync")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for the drain (default max(600, 6 × N/10))"
    )
    parser.add_argument(
        "--at",
        default=None,
        metavar="COMMIT",
        help="run the services from this commit (git archive into the temp dir), not the working tree",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of markdown")
    parser.add_argument("--record", action="store_true", help="append the markdown report to bench/RESULTS.md")
    args = parser.parse_args(argv)
    if bad := [k for k in args.mix if k not in REALTIME]:
        parser.error(f"--mix: unknown kind(s) {', '.join(bad)}; expected call, text, stop")
    args.warm_given = args.warm is not None
    if args.warm is None:
        stops = 1.3 * args.contacts / 10 / args.realtime_every * args.mix.count("stop") / len(args.mix)
        args.warm = max(20, math.ceil(stops))
    if args.warm < 1 or args.contacts < 1 or args.replicas < 1:
        parser.error("--warm, --contacts and --replicas must be at least 1")
    args.timeout = args.timeout or max(600.0, 6 * args.contacts / 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dfm-bench-burst-"))
    tree, commit = stack_tree(args.at, work)
    nats_server = EmbeddedNats(store_dir=work / "nats").start()
    pg = EmbeddedPostgres(work / "pg", delete_on_stop=True).start()
    key, _ = generate_ed25519()
    (work / "key.pem").write_text(private_pem(key))
    sandbox_port, ingress_port = free_port(), free_port()
    sandbox, ingress = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{ingress_port}"
    env = stack_env(
        dict(os.environ),
        nats_url=nats_server.url,
        database_url=pg.url(),
        sandbox_port=sandbox_port,
        ingress_port=ingress_port,
        key_file=work / "key.pem",
        public_key=public_pem(key),
    )
    if args.lifted:
        env["GHL_RATE_LIMIT_PER_10S"] = "1000000"
    else:
        env.pop("GHL_RATE_LIMIT_PER_10S", None)  # ghl-sync's own configured budget, as deployed
    settings = Settings(**{k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in Settings.model_fields})
    processes = Processes(env, logs=work / "logs", cwd=tree)
    start = processes.start
    try:  # the stack's own migrations and NATS topology (streams, durables), from its tree
        subprocess.run(
            [sys.executable, "-m", "services.cli", "migrate", "upgrade"],
            env=env,
            cwd=tree,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_http(f"{sandbox}/_sandbox/calls", start("sandbox"))
        httpx.post(f"{sandbox}/_sandbox/rate-limit", json={"per_10s": 10**9}).raise_for_status()
        raw = asyncio.run(raw_limits(nats_server.url, pg.url(), sandbox))
        limit = 10**9 if args.lifted else GHL_LIMIT_PER_10S
        httpx.post(f"{sandbox}/_sandbox/rate-limit", json={"per_10s": limit}).raise_for_status()
        httpx.post(f"{sandbox}/_sandbox/reset").raise_for_status()  # the raw measure's log and window
        for service in ("recorder", "aloware-sync", "verity-sync", *["ghl-sync"] * args.replicas):
            start(service)
        wait_http(f"{ingress}/api/health", start("ingress"))
        answer = httpx.get(
            f"{ingress}/leadconnector/oauth", params={"code": "code-bench", "state": sign_state(settings)}
        )
        assert answer.status_code == 200, answer.text
        time.sleep(2)  # consumers bind to their durables
        print(f"warm-up: {args.warm} contacts", file=sys.stderr)
        warm = asyncio.run(warm_up(ingress, settings, pg.url(), args.warm))
        asyncio.run(settle_all(pg.url(), timeout=120))  # their echoes too
        skip = len(httpx.get(f"{sandbox}/_sandbox/calls", params={"vendor": "ghl"}).json())
        invalid_before = processes.log_text("sandbox").count("sandbox_invalid_request")
        pids = processes.pids()
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        print(f"burst: {args.contacts} contacts, a real-time event every {args.realtime_every:g} s", file=sys.stderr)
        sent, timing, resends = asyncio.run(burst(ingress, settings, pg.url(), args))
        open_after = asyncio.run(settle_all(pg.url(), timeout=120))
        cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
        calls = httpx.get(f"{sandbox}/_sandbox/calls", params={"vendor": "ghl"}).json()[skip:]
        ghl_contacts = httpx.get(f"{sandbox}/_sandbox/ghl/contacts").json()
        rows = asyncio.run(ledger_rows(pg.url(), [s.event_id for s in sent if s.event_id]))
        for reason in asyncio.run(dead_reasons(pg.url(), [s.event_id for s in sent if s.event_id])):
            print(f"dead: {reason}", file=sys.stderr)
        invalid_lines = processes.log_text("sandbox").count("sandbox_invalid_request") - invalid_before
        crashed = {
            name: [p.returncode for p in ps if p.poll() is not None] for name, ps in processes.by_service.items()
        }
    finally:
        processes.stop_all()
        nats_server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    result = figures(args, sent, warm, timing, resends, calls, ghl_contacts, rows, invalid_lines, open_after)
    result |= {
        "commit": commit,
        "machine": machine(),
        "raw_limits_per_s": raw,
        "cpu_seconds": cpu,
        "exited_early": {k: v for k, v in crashed.items() if v},
    }
    report = json.dumps(_no_nan(result), indent=2) if args.json else markdown(args, result)
    print(report)
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write("\n" + markdown(args, result))
    return 0 if result["ledger"]["balanced"] else 1


def figures(
    args: argparse.Namespace,
    sent: list[Sent],
    warm: list[Sent],
    timing: dict[str, float],
    resends: int,
    calls: list[dict[str, Any]],
    ghl_contacts: list[dict[str, Any]],
    rows: dict[str, str],
    invalid_lines: int,
    open_after: int,
) -> dict[str, Any]:
    contacts = [s for s in sent if s.kind == "contact"]
    accepted = [s for s in sent if s.accepted]
    per_10s = GHL_LIMIT_PER_10S
    d = drain(sent, calls, per_10s=per_10s)
    per = requests_per_event(sent, calls)
    statuses = status_counts(calls)
    lat, no_write = latencies(sent, calls, kinds=REALTIME)
    lat_by_kind = {k: latencies(sent, calls, kinds=(k,)) for k in REALTIME}
    states = Counter(rows.get(s.event_id or "", "missing") for s in accepted)
    phones = {phone(n) for n in range(args.warm + args.contacts)}
    by_phone = Counter(c.get("phone") for c in ghl_contacts)
    twice = sum(v - 1 for p, v in by_phone.items() if p in phones and v > 1)
    missing_contacts = len(phones - set(by_phone))
    ledger = {
        "sent": len(sent),
        "accepted": len(accepted),
        "not accepted": len(sent) - len(accepted),
        "resends (429/503/connection)": resends,
        "done": states["done"],
        "quarantined": states["quarantined"],
        "dead": states["dead"],
        "open (not terminal)": sum(v for k, v in states.items() if k not in (*TERMINAL, "missing")),
        "missing (no row)": states["missing"],
        "GHL contacts missing": missing_contacts,
        "GHL contacts twice": twice,
        "OpenAPI violations (422)": statuses.invalid,
        "sandbox_invalid_request log lines": invalid_lines,
        "events still open in the database after settling (echoes included)": open_after,
    }
    ledger["balanced"] = (
        ledger["not accepted"] == 0
        and ledger["dead"] == 0
        and ledger["open (not terminal)"] == 0
        and ledger["missing (no row)"] == 0
        and missing_contacts == 0
        and twice == 0
        and statuses.invalid == 0
        and invalid_lines == 0
    )
    contact_accepts = [s.accepted_at for s in contacts if s.accepted_at is not None]
    first_send = min((s.sent_at for s in contacts), default=timing["began"])
    p99 = percentile(lat, 0.99)
    result = {
        "contacts": args.contacts,
        "realtime_every_s": args.realtime_every,
        "mix": args.mix,
        "replicas": args.replicas,
        "warm": args.warm,
        "lifted": args.lifted,
        "drain_s": d.seconds,
        "lower_bound_s": d.lower_bound_s,
        "ratio": d.ratio,
        "contacts_without_ghl_write": d.without_write,
        "ghl_requests_per_event": {k: per.per_event(k) for k in CLASSES},
        "ghl_requests_by_class": per.requests,
        "events_by_class": per.events,
        "ghl_requests_unattributed": per.unattributed,
        "ghl_endpoints_by_class": endpoints(sent, calls),
        "ghl_requests_total": statuses.total,
        "ghl_429s": statuses.too_many,
        "realtime_latency_s": {
            "p50": percentile(lat, 0.5),
            "p99": p99,
            "max": max(lat) if lat else float("nan"),
            "count": len(lat),
            "without_write": no_write,
            "by_kind": {
                k: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": max(v) if v else float("nan"),
                    "count": len(v), "without_write": w}
                for k, (v, w) in lat_by_kind.items()
            },
        },
        "ingress_contacts_accepted_per_s": (
            len(contact_accepts) / (max(contact_accepts) - first_send) if len(contact_accepts) > 1 else float("nan")
        ),
        "burst_send_s": timing["send_s"],
        "warm_accepted": sum(1 for s in warm if s.accepted),
        "ledger": ledger,
    }  # fmt: skip
    result["targets"] = {
        "drain ≤ 1.3 × N/10 s": d.ratio <= 1.3,
        "zero GHL 429s": statuses.too_many == 0,
        "real-time p99 ≤ 5 s": p99 <= 5.0,
        "ledger balanced": ledger["balanced"],
    }
    return result


def _no_nan(value: Any) -> Any:
    """``value`` with NaN as None, so --json prints standard JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _f(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN


def markdown(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lat = r["realtime_latency_s"]
    command = (
        f"python -m bench.burst.run --contacts {args.contacts} --realtime-every {args.realtime_every:g} "
        f"--replicas {args.replicas}{' --mix ' + ','.join(args.mix) if args.mix != list(REALTIME) else ''}"
        f"{f' --warm {args.warm}' if args.warm_given else ''}{' --lifted' if args.lifted else ''}"
        f"{f' --at {args.at}' if args.at else ''}"
    )
    lines = [
        f"### burst — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {r['commit']}",
        "",
        f"- command: `{command}`",
        f"- machine: {r['machine']}; every process, the sandbox and the generator on one host, "
        "shared with other helpers' test runs (not a quiet machine)",
        f"- GHL limit: {'lifted (sandbox and ghl-sync)' if args.lifted else 'sandbox 100 / 10 s, ghl-sync its default budget'}; "
        f"{args.replicas} ghl-sync replicas; {args.warm} warm contacts; real-time every {args.realtime_every:g} s "
        f"({', '.join(f'{v} {k}' for k, v in r['events_by_class'].items() if k != 'contact')})",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| drain: first contact accepted → last contact's GHL write | {_f(r['drain_s'])} s |",
        f"| lower bound N/10 s / ratio (target ≤ 1.3){' (limit lifted: not binding)' if args.lifted else ''} | "
        f"{_f(r['lower_bound_s'])} s / {_f(r['ratio'], 2)} |",
        f"| ingress: contacts accepted/s while the burst was sent | {_f(r['ingress_contacts_accepted_per_s'], 0)} |",
        "| GHL requests per event: " + " / ".join(CLASSES) + " | "
        + " / ".join(_f(r["ghl_requests_per_event"][k], 2) for k in CLASSES) + " |",
        f"| GHL requests total / not caused by a sent event (echoes, sweeps) | {r['ghl_requests_total']} / "
        f"{r['ghl_requests_unattributed']} |",
        f"| GHL 429s (target 0) | {r['ghl_429s']} |",
        f"| real-time latency accepted → GHL write p50 / p99 / max (target p99 ≤ 5 s) | {_f(lat['p50'], 2)} / "
        f"{_f(lat['p99'], 2)} / {_f(lat['max'], 2)} s ({lat['count']} events, {lat['without_write']} without a write) |",
        *[
            f"| … {k}: p50 / p99 / max | {_f(v['p50'], 2)} / {_f(v['p99'], 2)} / {_f(v['max'], 2)} s ({v['count']}) |"
            for k, v in lat["by_kind"].items() if v["count"] or v["without_write"]
        ],
        f"| contacts without a GHL write | {r['contacts_without_ghl_write']} |",
        f"| CPU seconds during the burst | {', '.join(f'{k} {v:.1f}' for k, v in r['cpu_seconds'].items())} |",
        "",
        "GHL requests by class and endpoint: "
        + "; ".join(
            f"{k}: " + ", ".join(f"{e} ×{n}" for e, n in v.items()) for k, v in r["ghl_endpoints_by_class"].items()
        ),
        "",
        "| ledger | value |",
        "| --- | ---: |",
        *[f"| {k} | {('yes' if v else 'NO') if isinstance(v, bool) else v} |" for k, v in r["ledger"].items()],
        "",
        "| target | met |",
        "| --- | --- |",
        *[f"| {k} | {'yes' if v else 'no'} |" for k, v in r["targets"].items()],
        "",
        "Raw limits, same run and servers, before the load (3 s each, GHL limit lifted):",
        "",
        "| raw limit | per second |",
        "| --- | ---: |",
        *[f"| {name} | {rate:,.0f} |" for name, rate in r["raw_limits_per_s"].items()],
        "",
    ]  # fmt: skip
    if r["exited_early"]:
        lines.insert(-1, f"Processes that exited during the run: {r['exited_early']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
