"""End-to-end ledger benchmark: an open-loop generator sends a mix of signed webhooks at a fixed
rate for a fixed time through the real ingress, NATS, every consumer (``dfm run`` processes)
and the sandbox vendors; then a ledger must balance.

Mix per contact (phones are unique per contact): an Aloware contact created, an update, a
call and a texting inbound message; GHL's own webhooks about our writes (echoes) flow back
through the ingress as they would. About 30 % of sends repeat an earlier body (sender
retries and redeliveries).

Latency: from each event's *scheduled* send time to its completion (``processed_at``, set
right after the rule's last vendor write), so a generator that falls behind shows in it.

Ledger (the run exits 1 and records nothing when it does not balance):
  sent = accepted + duplicate + rejected;  accepted = done + dead + quarantined (none missing);
  vendor effects: one GHL contact per phone, one call note per call, one GHL message per text
  — none missing, none twice.

Edge inputs (``--edge SHARE``, 0.05 with ``--chaos`` unless given): that share of the sends are
bodies real senders produce that no store or parser downstream can take as they are — texts
with NUL characters and 2 kB message ids (accepted, one GHL message each, NUL shown as U+FFFD),
an Aloware update with NUL in a name (accepted), and lone surrogates, 201-level nesting and
UTF-16 bodies (each must be a 400). The ledger counts them too.

Chaos (``--chaos``): during the send window a random consumer process is SIGKILLed and
replaced every ``--kill-every`` seconds, NATS is restarted once (a third in), PostgreSQL once
(two thirds in), and the fake GHL answers bursts of 429 and 503. The ledger must still balance.

Usage: python bench/e2e/run.py [--rate 100] [--seconds 30] [--replicas 1] [--chaos] [--edge SHARE]
                               [--settle S] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ingress.run import cpu_seconds, js_publish_rate, pg_insert_rate, wait_http
from bench.procs import Processes
from services.clients.ghl_oauth import sign_state
from services.common.broker import prepare_topology
from services.common.db import migrate
from services.common.db.session import sync_url
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.common.sender import sign
from services.common.settings import Settings
from services.common.signing import generate_ed25519, private_pem, public_pem

SECRET = "bench-verity-secret"
GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
SERVICES = ("recorder", "ghl-sync", "aloware-sync", "verity-sync")


def plan(contacts: int, rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, source, body) per event, contacts interleaved, then ~30 % repeats sprinkled in."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    for n in range(contacts):
        aloware_id, phone = str(9_500_000 + n), f"+1555{n:07d}"
        contact = {"id": aloware_id, "first_name": f"E{n}", "last_name": "Bench", "phone_number": phone,
                   "email": f"e2e{n}@example.com"}
        events += [
            ("aloware_contact", "aloware", {"event": "Contact Created", "body": {
                **contact, "updated_at": "2026-11-27T00:00:00+00:00"}}),
            ("aloware_contact", "aloware", {"event": "Contact Updated", "body": {
                **contact, "first_name": f"E{n}b", "updated_at": "2026-11-27T00:00:01+00:00"}}),
            ("call", "aloware", {"event": "Call Disposed", "body": {
                "id": str(9_600_000 + n), "contact_id": aloware_id, "lead_number": phone, "direction": "outbound",
                "disposition": "Interested", "status": "completed", "duration": 60,
                "created_at": "2026-11-27T00:00:02+00:00"}}),
            ("text", "texting", {"eventType": "message.received", "messageId": f"e2e-msg-{n}", "direction": "inbound",
                                 "from": phone, "to": "+15550000000", "body": f"hello {n}",
                                 "conversationId": f"chat-{n}", "timestamp": "2026-11-27T00:00:03Z"}),
        ]
    ordered = [events[i] for i in sorted(range(len(events)), key=lambda i: (i % 4 != 0, i))]  # creates first
    repeats = [rng.choice(ordered[: max(1, i)]) for i in range(int(len(ordered) * 0.3))]
    out = list(ordered)
    for item in repeats:
        out.insert(rng.randrange(len(out) // 4, len(out) + 1), item)
    return out


REFUSED_BODIES = (  # each must be answered 400 by the ingress (README "What a webhook may contain")
    b'{"eventType":"message.received","messageId":"edge-bad","body":"\\ud800"}',
    b'{"eventType":"message.received","messageId":"edge-deep","x":' + b"[" * 200 + b"]" * 200 + b"}",
    '{"eventType":"message.received","messageId":"edge-utf16"}'.encode("utf-16"),
)


def with_edges(events: list[tuple[str, str, dict[str, Any]]], share: float, rng: random.Random
               ) -> list[tuple[str, str, dict[str, Any]]]:
    """``events`` with ``share`` of edge inputs put in among them (same length in all)."""
    count = int(len(events) * share)
    if not count:
        return events
    phones = [b["body"]["phone_number"] for k, _, b in events if k == "aloware_contact"]
    out = list(events)
    for n in range(count):
        phone = rng.choice(phones)
        kind = n % 4
        if kind == 0:
            edge = ("edge_text", "texting", {"eventType": "message.received", "messageId": f"e2e-edge-{n}",
                    "direction": "inbound", "from": phone, "to": "+15550000000", "body": f"edge {n} \u0000@",
                    "conversationId": f"chat-edge-{n}", "timestamp": "2026-11-27T00:00:04Z"})
        elif kind == 1:
            edge = ("edge_text", "texting", {"eventType": "message.received", "messageId": "L" * 2000 + str(n),
                    "direction": "inbound", "from": phone, "to": "+15550000000", "body": f"edge {n} long id",
                    "conversationId": f"chat-edge-{n}", "timestamp": "2026-11-27T00:00:04Z"})
        elif kind == 2:
            base = next(b for k, _, b in events if k == "aloware_contact" and b["body"]["phone_number"] == phone)
            edge = ("edge_contact", "aloware", {"event": "Contact Updated", "body": {
                **base["body"], "last_name": "Bench\u0000", "updated_at": "2026-11-27T00:00:05+00:00"}})
        else:
            edge = ("edge_refused", "texting", {"__raw__": REFUSED_BODIES[n % len(REFUSED_BODIES)].decode("latin-1")})
        out.insert(rng.randrange(len(out) // 4, len(out) + 1), edge)
    return out[: len(events)]


async def drive(base: str, settings: Settings, events: list[tuple[str, str, dict[str, Any]]], rate: float
                ) -> dict[str, Any]:
    """Open loop: event i is sent at start + i / rate whatever the answers do."""
    results: list[dict[str, Any]] = []
    start = time.monotonic() + 0.5
    wall = datetime.now(UTC).timestamp() + 0.5
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def one(i: int, source: str, body: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            raw = body["__raw__"].encode("latin-1") if "__raw__" in body else json.dumps(body).encode()
            request = sign(settings, source, raw)
            try:
                answer = await client.post(request.path, content=raw, headers=request.headers, params=request.params)
                status, data = answer.status_code, answer.json() if answer.status_code == 200 else {}
            except httpx.HTTPError as exc:
                status, data = 0, {"error": type(exc).__name__}
            results.append({"i": i, "scheduled": wall + i / rate, "status": status, "kind": body,
                            "edge": events[i][0] == "edge_refused", "answer": data.get("status"),
                            "id": data.get("id")})

        await asyncio.gather(*(one(i, source, body) for i, (_, source, body) in enumerate(events)))
    return {"results": results, "elapsed": time.monotonic() - start}


async def settle(db: str, ids: set[str], timeout: float) -> dict[str, Any]:
    conn = await asyncpg.connect(sync_url(db))
    try:
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 10
        while True:
            rows = await conn.fetch(
                "SELECT id::text, status, extract(epoch FROM processed_at) AS done_at FROM webhook_events "
                "WHERE id = ANY($1::uuid[]) UNION ALL SELECT id::text, status, extract(epoch FROM processed_at) "
                "FROM texting_webhook_events WHERE id = ANY($1::uuid[])", list(ids))
            finished = [r for r in rows if r["status"] in ("done", "dead", "quarantined")]
            if time.monotonic() >= next_note:
                print(f"settling: {len(finished)} of {len(ids)} accepted events finished", file=sys.stderr)
                next_note += 10
            if len(finished) == len(ids) or time.monotonic() > deadline:
                return {r["id"]: (r["status"], float(r["done_at"]) if r["done_at"] is not None else None)
                        for r in rows}
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def make_chaos(args: argparse.Namespace, procs: dict[str, list[subprocess.Popen[bytes]]], start: Any,
               nats_server: EmbeddedNats, pg: EmbeddedPostgres, sandbox: str, log: list[str]) -> None:
    """The fault schedule of a chaos run (wall-clock, alongside the generator)."""
    rng = random.Random(11)
    began = time.monotonic()
    window = args.seconds
    done_nats = done_pg = done_429 = done_503 = False
    kills = 0
    next_kill = args.kill_every
    while (elapsed := time.monotonic() - began) < window:
        if elapsed >= next_kill:
            service = rng.choice(["ghl-sync", "aloware-sync", "verity-sync", "recorder"])
            victim = next(p for p in procs[service] if p.poll() is None)
            victim.kill()
            start(service)
            kills += 1
            next_kill += args.kill_every
        if not done_429 and elapsed >= window / 6:
            httpx.post(f"{sandbox}/_sandbox/faults", json={"vendor": "ghl", "count": 30, "status": 429,
                                                           "retry_after": 1})
            done_429 = True
        if not done_nats and elapsed >= window / 3:
            nats_server.kill()
            time.sleep(1.0)
            nats_server.start()
            done_nats = True
        if not done_503 and elapsed >= window / 2:
            httpx.post(f"{sandbox}/_sandbox/faults", json={"vendor": "ghl", "count": 30, "status": 503})
            done_503 = True
        if not done_pg and elapsed >= 2 * window / 3:
            pg.stop()
            time.sleep(1.0)
            pg.start()
            done_pg = True
        time.sleep(0.1)
    log += [f"{kills} consumer SIGKILLs (every {args.kill_every:g} s, replaced at once)", "NATS killed and restarted once",
            "PostgreSQL stopped and restarted once", "GHL 429 ×30 and 503 ×30 bursts"]


async def sandbox_request_rate(sandbox: str, seconds: float, in_flight: int = 32) -> float:
    """GHL duplicate searches per second the fake vendor answers (read-only, OpenAPI-checked)."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=f"{sandbox}/ghl", headers=GHL, timeout=10,
                                 limits=httpx.Limits(max_connections=in_flight)) as client:
        async def worker(w: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                answer = await client.get("/contacts/search/duplicate",
                                          params={"locationId": "ghlLocationDemo00001", "number": f"+1555000{w:04d}"})
                assert answer.status_code == 200, answer.text
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(in_flight)))
        return done / (time.perf_counter() - start)


async def raw_limits(nats_url: str, db_url: str, sandbox: str, seconds: float = 3.0) -> dict[str, float]:
    """The servers' own ceilings, measured on this run's servers before the load starts."""
    limits = {"JetStream acked publish (32 in flight)": await js_publish_rate(nats_url, seconds),
              "PostgreSQL single-row insert (32 connections)": await pg_insert_rate(db_url, seconds),
              "sandbox GHL duplicate search (32 in flight)": await sandbox_request_rate(sandbox, seconds)}
    conn = await asyncpg.connect(sync_url(db_url))
    await conn.execute("DROP TABLE IF EXISTS bench_raw")
    await conn.close()
    return limits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="events per second (open loop)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--replicas", type=int, default=1, help="processes of each sync consumer")
    parser.add_argument("--chaos", action="store_true", help="kill consumers, restart NATS and PostgreSQL")
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--edge", type=float, default=None,
                        help="share of edge inputs in the mix (default 0.05 with --chaos, else 0)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait for the accepted events to finish (default: 4 × --seconds, at least 120)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    total = int(args.rate * args.seconds)
    contacts = max(1, int(total / 1.3 / 4))
    edge_share = args.edge if args.edge is not None else (0.05 if args.chaos else 0.0)
    events = with_edges(plan(contacts, random.Random(7))[:total], edge_share, random.Random(11))
    work = Path(tempfile.mkdtemp(prefix="dfm-bench-e2e-"))
    nats_server = EmbeddedNats(store_dir=work / "nats", sync_always=True).start()
    pg = EmbeddedPostgres(work / "pg", delete_on_stop=not args.chaos).start()  # chaos restarts it
    key, _ = generate_ed25519()
    (work / "key.pem").write_text(private_pem(key))
    sandbox_port, ingress_port = free_port(), free_port()
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    env = {
        **os.environ, "NATS_URL": nats_server.url, "DATABASE_URL": pg.url(), "LOG_LEVEL": "warning",
        "INGRESS_PORT": str(ingress_port), "SANDBOX_PORT": str(sandbox_port), "METRICS_PORT": "0",
        "GHL_API_KEY": "sandbox-ghl-key", "GHL_LOCATION_ID": "ghlLocationDemo00001",
        "GHL_BASE_URL": f"{sandbox}/ghl", "ALOWARE_API_TOKEN": "sandbox-aloware-token",
        "ALOWARE_BASE_URL": f"{sandbox}/aloware/api/v1", "ALOWARE_WEBHOOK_BASIC_USER": "aloware",
        "ALOWARE_WEBHOOK_BASIC_PASS": "bench:pass", "VERITY_WEBHOOK_SECRET": SECRET,
        "VERITY_BASE_URL": f"{sandbox}/verity", "VERITY_API_KEY": "sandbox-verity-key",
        "DF_ADMIN_SECRET": "bench", "X_DF_JOBS_SECRET": "bench", "GHL_RATE_LIMIT_PER_10S": "1000000",
        "CONTACT_SOURCE_OF_TRUTH": "aloware", "DFM_GHL_SIGNING_KEY_FILE": str(work / "key.pem"),
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public_pem(key), "DFM_SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{ingress_port}",
        "GHL_CLIENT_ID": "sandbox-client-id", "GHL_CLIENT_SECRET": "sandbox-client-secret",
        "GHL_CONVERSATION_PROVIDER_ID": "sandbox-provider",
        "DFM_TOKEN_KEY": "Qk9_hHuUeXy6sWr5lD6c0mJ3Ojz3v0Yt3kHq3Yl7x8M=", "ALOWARE_MAX_RPS": "100000",
        # a killed process's messages come back within seconds; retries stay short under chaos
        "DFM_CONSUMER_ACK_WAIT_S": "5", "RETRY_BASE_DELAY_S": "0.5", "RETRY_MAX_DELAY_S": "5",
    }
    settings = Settings(**{k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in Settings.model_fields})

    processes = Processes(env)
    start = processes.start

    try:
        migrate.upgrade(pg.url())
        asyncio.run(prepare_topology(settings))
        wait_http(f"{sandbox}/_sandbox/calls", start("sandbox"))
        httpx.post(f"{sandbox}/_sandbox/rate-limit", json={"per_10s": 10**9})
        for service in SERVICES:
            for _ in range(args.replicas if service != "recorder" else 1):
                start(service)
        wait_http(f"http://127.0.0.1:{ingress_port}/api/health", start("ingress"))
        answer = httpx.get(f"http://127.0.0.1:{ingress_port}/leadconnector/oauth", params={"code": "code-bench", "state": sign_state(settings)})
        assert answer.status_code == 200, answer.text
        time.sleep(2)  # consumers bind to their durables
        raw = asyncio.run(raw_limits(nats_server.url, pg.url(), sandbox))
        skip_calls = len(httpx.get(f"{sandbox}/_sandbox/calls").json())  # the ledger counts the load's only
        pids = processes.pids()
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        chaos_log: list[str] = []
        chaos = threading.Thread(target=make_chaos, args=(args, processes.by_service, start, nats_server, pg,
                                                           sandbox, chaos_log),
                                 daemon=True) if args.chaos else None
        if chaos is not None:
            chaos.start()
        run = asyncio.run(drive(f"http://127.0.0.1:{ingress_port}", settings, events, args.rate))
        if chaos is not None:
            chaos.join()
        accepted = {r["id"] for r in run["results"] if r["answer"] == "accepted"}
        print(f"sent {len(run['results'])} in {run['elapsed']:.0f} s", file=sys.stderr)
        finished = asyncio.run(settle(pg.url(), accepted, timeout=args.settle or max(120.0, args.seconds * 4)))
        # a process killed by the chaos took its CPU count with it: no figure for its service
        cpu = {name: cpu_seconds(p) - before[name] if processes.pids()[name] == p else None
               for name, p in pids.items()}
        calls = httpx.get(f"{sandbox}/_sandbox/calls").json()[skip_calls:]
        ghl_contacts = httpx.get(f"{sandbox}/_sandbox/ghl/contacts").json()
        conversations = httpx.get(f"{sandbox}/_sandbox/ghl/conversations").json()
    finally:
        processes.stop_all()
        nats_server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    results = run["results"]
    sent = len(results)
    duplicate = sum(1 for r in results if r["answer"] == "duplicate")
    rejected = sum(1 for r in results if r["status"] != 200)
    refused_edges = [r for r in results if r["edge"]]
    edges_400 = sum(1 for r in refused_edges if r["status"] == 400)
    states = [s for s, _ in finished.values()]
    done, dead = states.count("done"), states.count("dead")
    quarantined = states.count("quarantined")
    # A body first accepted into the outbox (NATS down) and sent again before the outbox
    # drained is accepted twice under two ids; the permanent dedupe key keeps one row. Such a
    # "late duplicate" is not missing when another id of the same body has its row.
    by_body: dict[str, set[str]] = {}
    for r in results:
        if r["answer"] == "accepted":
            by_body.setdefault(json.dumps(r["kind"], sort_keys=True), set()).add(r["id"])
    late = sum(len(ids) - 1 for ids in by_body.values()
               if any(finished.get(i, ("", None))[0] in ("done", "dead", "quarantined") for i in ids))
    missing = sum(1 for ids in by_body.values()
                  if not any(finished.get(i, ("", None))[0] in ("done", "dead", "quarantined") for i in ids))
    unfinished = {s: states.count(s) for s in set(states) - {"done", "dead", "quarantined"}}
    if late:
        unfinished["late duplicates (one row per dedupe key)"] = late
    phones = {b["body"]["phone_number"] for k, _, b in events if k == "aloware_contact"}
    calls_sent = {b["body"]["id"] for k, _, b in events if k == "call"}
    texts_sent = {b["messageId"] for k, _, b in events if k == "text"}
    notes = [c for c in calls if c["vendor"] == "ghl" and c["method"] == "POST" and c["path"].endswith("/notes")
             and c["status"] == 201]
    messages = [m for m in conversations["messages"] if m.get("body", "").startswith("hello ")]
    edge_texts = {b["body"].replace("\u0000", "\ufffd") for k, _, b in events if k == "edge_text"}
    edge_messages = [m["body"] for m in conversations["messages"] if m.get("body", "").startswith("edge ")]
    ghl_phones = [c.get("phone") for c in ghl_contacts]
    effects = {
        "ghl contacts (one per phone)": (len(set(ghl_phones) & phones), len(phones), len(ghl_phones) - len(set(ghl_phones))),
        "call notes (one per call)": (len(notes), len(calls_sent), max(0, len(notes) - len(calls_sent))),
        "GHL messages (one per text)": (len({m["body"] for m in messages}), len(texts_sent),
                                        len(messages) - len({m["body"] for m in messages})),
        "edge texts: GHL messages (NUL as U+FFFD)": (len(set(edge_messages) & edge_texts), len(edge_texts),
                                                     len(edge_messages) - len(set(edge_messages))),
        "edge bodies refused with 400": (edges_400, len(refused_edges), 0),
    }
    balanced = (sent == len(accepted) + duplicate + rejected and missing == 0 and dead == 0
                and done + quarantined + late == len(accepted)
                and all(got == want and twice == 0 for got, want, twice in effects.values()))
    latencies = sorted((done_at - r["scheduled"]) * 1000 for r in results if r["id"] in finished
                       and r["answer"] == "accepted" and (done_at := finished[r["id"]][1]) is not None)
    vendor_calls = len([c for c in calls if c["vendor"] in ("ghl", "aloware", "verity")])

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    lines = [
        f"### e2e ledger — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python bench/e2e/run.py --rate {args.rate:g} --seconds {args.seconds:g} --replicas {args.replicas}"
        f"{' --chaos' if args.chaos else ''}{f' --edge {args.edge:g}' if args.edge is not None else ''}"
        f"{f' --settle {args.settle:g}' if args.settle else ''}`",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; every "
        "process, the sandbox vendors and the generator on one host; rate limiting off",
        f"- mix: {contacts} contacts × (Aloware create, update, call, inbound text), ~30 % repeated sends"
        + (f", {edge_share:.0%} edge inputs (NUL, 2 kB ids, lone surrogates, deep nesting, UTF-16)"
           if edge_share else ""),
        *([f"- chaos: {'; '.join(chaos_log)}"] if args.chaos else []),
        "",
        "| ledger | value |",
        "| --- | ---: |",
        f"| sent / accepted / duplicate / rejected | {sent} / {len(accepted)} / {duplicate} / {rejected} |",
        f"| done / dead / quarantined / missing | {done} / {dead} / {quarantined} / {missing}"
        + (f" ({unfinished})" if unfinished else "") + " |",
        *[f"| {name}: got / expected / twice | {g} / {w} / {t} |" for name, (g, w, t) in effects.items()],
        f"| balanced | {'yes' if balanced else 'NO'} |",
        "",
        "| measurement | value |",
        "| --- | ---: |",
        f"| offered rate / achieved send rate | {args.rate:g} / {sent / run['elapsed']:.0f} events/s |",
        f"| latency scheduled send → done p50 / p95 / p99 / max | {pct(0.5):.0f} / {pct(0.95):.0f} / "
        f"{pct(0.99):.0f} / {max(latencies) if latencies else float('nan'):.0f} ms |",
        f"| vendor calls per accepted event | {vendor_calls / max(1, len(accepted)):.2f} |",
        f"| CPU seconds | {', '.join(f'{k} ' + (f'{v:.1f}' if v is not None else 'n/a (killed)') for k, v in cpu.items())} |",
        "",
        "Raw limits, same run and servers, measured just before the load (3 s each):",
        "",
        "| raw limit | per second |",
        "| --- | ---: |",
        *[f"| {name} | {rate:,.0f} |" for name, rate in raw.items()],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if not balanced:
        print("LEDGER DOES NOT BALANCE: not recorded", file=sys.stderr)
        return 1
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

