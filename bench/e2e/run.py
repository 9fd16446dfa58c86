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

Opt-outs and call lists (``--optouts SHARE``, default 0.05 of the contacts, at least one of
each kind; 0 turns this part off; ``ENABLE_POWER_DIALER_LISTS=true`` and the gateway process
run with it): ``--listed SHARE`` (default 0.2) of as many contacts again are list-managed. Each
is created in GHL by a person (the sandbox's GHL API with an owner, Chris or Rafi, and the tag
``call_now``), so GHL's own ContactCreate (the sandbox emits it; not our write, so not an echo)
puts it on its agent's NEW_LEADS list, and a ContactTagUpdate the generator sends a few seconds
later puts it on CALL_NOW. (The echoes of our own writes change no list, R1: the Aloware-created
contacts of the mix above must end on no list, and the ledger counts that too.) The opt-out
share of the list-managed contacts opt out a few seconds after their tag event, in the same
open loop, by a texting ``optout.stop`` from their number, an Aloware DNC, or a GHL SMS DND
(the contact changed in GHL without a webhook, then GHL's ContactDndUpdate), the three in turn;
some opt-outs race their contact's own list events, which is the point.

Phase 2 (sends after the opt-out): an open loop cannot order two events, so the sends that
must be refused are sent only after every phase-1 event, including the webhooks the sandbox
emitted, is finished in the database and the registry says opted out for every opted-out
number. Then each list-managed number gets a GHL agent SMS (provider delivery, M-2, signed
like GHL's; opted-out numbers half in national spelling) and a gateway ``/apisms`` send. The
ledger: no Verity send-message request for an opted-out number, each refused (M-2 outcome and
gateway 403 ``recipient_opted_out``); every other number's two sends reach Verity once; no
opted-out number on any Aloware list or with an active ``contact_list_memberships`` row; every
other list-managed contact on its two lists; nothing else on any list.

Usage: python bench/e2e/run.py [--rate 100] [--seconds 30] [--replicas 1] [--chaos] [--edge SHARE]
                               [--optouts SHARE] [--listed SHARE] [--settle S] [--record]
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
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ingress.run import cpu_seconds, js_publish_rate, pg_insert_rate, wait_http
from bench.procs import VERITY_SECRET, Processes, stack_env
from contracts.phone import to_e164
from services.clients.ghl_oauth import sign_state
from services.infra.broker import prepare_topology
from services.infra.db import migrate
from services.infra.db.session import sync_url
from services.infra.settings import Settings
from services.infra.signing import generate_ed25519, private_pem, public_pem
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.tooling.sender import sign

SECRET = VERITY_SECRET
GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}
SERVICES = ("recorder", "ghl-sync", "aloware-sync", "verity-sync")


def plan(contacts: int, rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, source, body) per event, contacts interleaved, then ~30 % repeats sprinkled in."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    for n in range(contacts):
        aloware_id, phone = str(9_500_000 + n), f"+1555{n:07d}"
        contact = {
            "id": aloware_id,
            "first_name": f"E{n}",
            "last_name": "Bench",
            "phone_number": phone,
            "email": f"e2e{n}@example.com",
        }
        events += [
            (
                "aloware_contact",
                "aloware",
                {"event": "Contact Created", "body": {**contact, "updated_at": "2026-11-27T00:00:00+00:00"}},
            ),
            (
                "aloware_contact",
                "aloware",
                {
                    "event": "Contact Updated",
                    "body": {**contact, "first_name": f"E{n}b", "updated_at": "2026-11-27T00:00:01+00:00"},
                },
            ),
            (
                "call",
                "aloware",
                {
                    "event": "Call Disposed",
                    "body": {
                        "id": str(9_600_000 + n),
                        "contact_id": aloware_id,
                        "lead_number": phone,
                        "direction": "outbound",
                        "disposition": "Interested",
                        "status": "completed",
                        "duration": 60,
                        "created_at": "2026-11-27T00:00:02+00:00",
                    },
                },
            ),
            (
                "text",
                "texting",
                {
                    "eventType": "message.received",
                    "messageId": f"e2e-msg-{n}",
                    "direction": "inbound",
                    "from": phone,
                    "to": "+15550000000",
                    "body": f"hello {n}",
                    "conversationId": f"chat-{n}",
                    "timestamp": "2026-11-27T00:00:03Z",
                },
            ),
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


def with_edges(
    events: list[tuple[str, str, dict[str, Any]]], share: float, rng: random.Random
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
            edge = (
                "edge_text",
                "texting",
                {
                    "eventType": "message.received",
                    "messageId": f"e2e-edge-{n}",
                    "direction": "inbound",
                    "from": phone,
                    "to": "+15550000000",
                    "body": f"edge {n} \u0000@",
                    "conversationId": f"chat-edge-{n}",
                    "timestamp": "2026-11-27T00:00:04Z",
                },
            )
        elif kind == 1:
            edge = (
                "edge_text",
                "texting",
                {
                    "eventType": "message.received",
                    "messageId": "L" * 2000 + str(n),
                    "direction": "inbound",
                    "from": phone,
                    "to": "+15550000000",
                    "body": f"edge {n} long id",
                    "conversationId": f"chat-edge-{n}",
                    "timestamp": "2026-11-27T00:00:04Z",
                },
            )
        elif kind == 2:
            base = next(b for k, _, b in events if k == "aloware_contact" and b["body"]["phone_number"] == phone)
            edge = (
                "edge_contact",
                "aloware",
                {
                    "event": "Contact Updated",
                    "body": {**base["body"], "last_name": "Bench\u0000", "updated_at": "2026-11-27T00:00:05+00:00"},
                },
            )
        else:
            edge = ("edge_refused", "texting", {"__raw__": REFUSED_BODIES[n % len(REFUSED_BODIES)].decode("latin-1")})
        out.insert(rng.randrange(len(out) // 4, len(out) + 1), edge)
    return out[: len(events)]


LIST_AGENTS = {"CHRIS": "sbxUserChris", "RAFI": "sbxUserRafi"}  # the sandbox GHL's users, seeded as agents
LIST_NAMES = tuple(f"DF_{agent}_{key}" for agent in (*LIST_AGENTS, "UNASSIGNED") for key in ("NEW_LEADS", "CALL_NOW"))
OPT_OUT_KINDS = ("stop", "dnc", "dnd")
GATEWAY_KEY = "bench-gateway-key"
CATALOG = ROOT / "tests" / "fixtures" / "apis" / "verity" / "api_catalog.json"


@dataclass
class Listed:
    """A list-managed contact: created in GHL by a person, owned by ``agent``."""

    n: int
    phone: str
    agent: str
    opt_out: str | None  # one of OPT_OUT_KINDS, or None: never opts out


def plan_listed(contacts: int, listed_share: float, optout_share: float) -> list[Listed]:
    """The list-managed contacts (phones apart from the mix's), the first ``optout_share`` of
    ``contacts`` (at least one of each kind) opting out, kinds and agents in turn."""
    if optout_share <= 0:
        return []
    opting = max(len(OPT_OUT_KINDS), round(contacts * optout_share))
    count = max(2 * opting, round(contacts * listed_share))
    agents = list(LIST_AGENTS)
    return [
        Listed(n, f"+1555{5_000_000 + n:07d}", agents[n % 2], OPT_OUT_KINDS[n % 3] if n < opting else None)
        for n in range(count)
    ]


def with_listed(
    events: list[tuple[str, str, dict[str, Any]]], listed: list[Listed], rate: float, rng: random.Random
) -> list[tuple[str, str, dict[str, Any]]]:
    """``events`` with each list-managed contact's GHL create (in the first 40 % of the run),
    its tag event 2-6 s later and its opt-out 3-10 s after that. Their bodies need what the
    sandbox answers (the GHL id, the Aloware id), so they are made when sent (``Lazy``)."""
    slots = [(float(i), event) for i, event in enumerate(events)]
    for contact in listed:
        create = rng.uniform(0, 0.4 * len(events))
        tag = create + rng.uniform(2, 6) * rate
        slots += [
            (create, ("ghl_human_create", "sandbox", {"__lazy__": "create", "n": contact.n})),
            (tag, ("list_tag", "ghl", {"__lazy__": "tag", "n": contact.n})),
        ]
        if contact.opt_out:
            slots.append(
                (
                    tag + rng.uniform(3, 10) * rate,
                    (
                        f"optout_{contact.opt_out}",
                        "aloware" if contact.opt_out == "dnc" else "texting" if contact.opt_out == "stop" else "ghl",
                        {"__lazy__": contact.opt_out, "n": contact.n},
                    ),
                )
            )
    return [event for _, event in sorted(slots, key=lambda s: s[0])]


def national(phone: str) -> str:
    """+15555000001 as a person types it: (555) 500-0001."""
    return f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}"


def plan_sends(listed: list[Listed]) -> list[tuple[str, str, dict[str, Any]]]:
    """Phase 2: an agent SMS through GHL's provider (M-2) and a gateway send to every
    list-managed number; opted-out numbers half in national spelling (the gate normalises)."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    for contact in listed:
        to = national(contact.phone) if contact.opt_out and contact.n % 2 else contact.phone
        events += [
            ("agent_sms", "ghl_provider", {"__lazy__": "agent_sms", "n": contact.n, "to": to}),
            ("gateway_send", "gateway", {"__lazy__": "gateway", "n": contact.n, "to": to}),
        ]
    return events


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Lazy:
    """Makes the bodies of the list-managed events when they are sent, and performs the
    actions that are not webhooks (a person's GHL create, a gateway send)."""

    def __init__(self, sandbox: str, gateway: str | None, settings: Settings, listed: list[Listed]) -> None:
        self.sandbox, self.gateway, self.settings = sandbox, gateway, settings
        self.listed = {c.n: c for c in listed}
        self.contacts: dict[int, dict[str, Any]] = {}  # GHL contacts as created, by ``Listed.n``
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}  # this event loop's (one per phase)
        self.actions: list[dict[str, Any]] = []  # what was not an ingress webhook, with its answer

    def contact(self, n: int) -> asyncio.Future[dict[str, Any]]:
        future = self.waiting.get(n)
        if future is None or future.get_loop() is not asyncio.get_running_loop():
            future = self.waiting[n] = asyncio.get_running_loop().create_future()
        return future

    async def ghl_contact(self, n: int) -> dict[str, Any]:
        """The GHL contact of ``n``, waiting for its create when the send came first."""
        if n in self.contacts:
            return self.contacts[n]
        return await asyncio.wait_for(asyncio.shield(self.contact(n)), timeout=60)

    def ghl_webhook(self, kind: str, contact: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": kind,
            "locationId": contact.get("locationId"),
            **contact,
            "timestamp": _now(),
            "webhookId": str(uuid.uuid4()),
        }

    async def resolve(
        self, client: httpx.AsyncClient, kind: str, source: str, body: dict[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        """(source, body) to post to the ingress, or None when the action was done here."""
        listed, sandbox = self.listed[body["n"]], self.sandbox
        if body["__lazy__"] == "create":  # a person creates the contact in GHL
            answer = await client.post(
                f"{sandbox}/ghl/contacts/",
                headers=GHL,
                json={
                    "locationId": self.settings.ghl_location_id,
                    "firstName": f"L{listed.n}",
                    "lastName": "Listed",
                    "phone": listed.phone,
                    "assignedTo": LIST_AGENTS[listed.agent],
                    "tags": ["call_now"],
                },
            )
            self.actions.append({"kind": kind, "status": answer.status_code})
            if answer.status_code == 201:
                self.contacts[listed.n] = answer.json()["contact"]
                self.contact(listed.n).set_result(self.contacts[listed.n])
            else:
                self.contact(listed.n).set_exception(RuntimeError(f"GHL create answered {answer.status_code}"))
            return None
        if body["__lazy__"] == "tag":
            return source, self.ghl_webhook("ContactTagUpdate", await self.ghl_contact(listed.n))
        if body["__lazy__"] == "stop":
            return source, {
                "eventType": "optout.stop",
                "messageId": f"e2e-stop-{listed.n}",
                "direction": "inbound",
                "from": listed.phone,
                "to": "+15550000000",
                "body": "STOP",
                "conversationId": f"chat-stop-{listed.n}",
                "timestamp": _now(),
                "status": "received",
            }
        if body["__lazy__"] == "dnd":  # changed in GHL (no webhook of its own), then GHL's ContactDndUpdate
            contact = await self.ghl_contact(listed.n)
            changed = await client.patch(
                f"{sandbox}/_sandbox/ghl/contacts/{contact['id']}", json={"dndSettings": {"SMS": {"status": "active"}}}
            )
            return source, self.ghl_webhook("ContactDndUpdate", changed.json())
        if body["__lazy__"] == "dnc":  # Aloware's contact, as aloware-sync created it (if it has yet)
            found = [
                c
                for c in (await client.get(f"{sandbox}/_sandbox/aloware/contacts")).json()
                if c.get("phone_number") == listed.phone
            ]
            contact = {
                "first_name": f"L{listed.n}",
                "last_name": "Listed",
                "phone_number": listed.phone,
                "is_dnc": True,
                "updated_at": datetime.now(UTC).isoformat(),
            }
            return source, {
                "event": "Contact DNC Updated",
                "body": {**({"id": found[0]["id"]} if found else {}), **contact},
            }
        if body["__lazy__"] == "agent_sms":
            contact = await self.ghl_contact(listed.n)
            return source, {
                "contactId": contact["id"],
                "locationId": self.settings.ghl_location_id,
                "messageId": f"e2e-agent-sms-{listed.n}",
                "type": "SMS",
                "phone": body["to"],
                "message": f"bench agent sms {listed.n}",
                "attachments": [],
                "userId": LIST_AGENTS[listed.agent],
            }
        assert body["__lazy__"] == "gateway" and self.gateway is not None
        answer = await client.post(
            f"{self.gateway}/api/verity",
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            json={
                "endpoint": "/apisms",
                "method": "POST",
                "body": {"to": body["to"], "body": f"bench gateway {listed.n}"},
            },
        )
        error = (
            answer.json().get("error")
            if answer.headers.get("content-type", "").startswith("application/json")
            else None
        )
        self.actions.append(
            {
                "kind": kind,
                "n": listed.n,
                "status": answer.status_code,
                "code": error.get("code") if isinstance(error, dict) else None,
            }
        )
        return None


async def drive(
    base: str, settings: Settings, events: list[tuple[str, str, dict[str, Any]]], rate: float, lazy: Lazy | None = None
) -> dict[str, Any]:
    """Open loop: event i is sent at start + i / rate whatever the answers do (a lazy body is
    made then, see ``Lazy``; what is not a webhook is not in the results)."""
    results: list[dict[str, Any]] = []
    start = time.monotonic() + 0.5
    wall = datetime.now(UTC).timestamp() + 0.5
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one(i: int, source: str, body: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            if "__lazy__" in body:
                assert lazy is not None
                made = await lazy.resolve(client, events[i][0], source, body)
                if made is None:
                    return
                source, body = made
            raw = body["__raw__"].encode("latin-1") if "__raw__" in body else json.dumps(body).encode()
            request = sign(settings, source, raw)
            try:
                answer = await client.post(request.path, content=raw, headers=request.headers, params=request.params)
                status, data = answer.status_code, answer.json() if answer.status_code == 200 else {}
            except httpx.HTTPError as exc:
                status, data = 0, {"error": type(exc).__name__}
            results.append(
                {
                    "i": i,
                    "scheduled": wall + i / rate,
                    "status": status,
                    "kind": body,
                    "edge": events[i][0] == "edge_refused",
                    "answer": data.get("status"),
                    "id": data.get("id"),
                }
            )

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
                "FROM texting_webhook_events WHERE id = ANY($1::uuid[])",
                list(ids),
            )
            finished = [r for r in rows if r["status"] in ("done", "dead", "quarantined")]
            if time.monotonic() >= next_note:
                print(f"settling: {len(finished)} of {len(ids)} accepted events finished", file=sys.stderr)
                next_note += 10
            if len(finished) == len(ids) or time.monotonic() > deadline:
                return {r["id"]: (r["status"], float(r["done_at"]) if r["done_at"] is not None else None) for r in rows}
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def settle_all(db: str, timeout: float) -> int:
    """Wait until every event in the database is finished, the webhooks the sandbox sent on
    its own (a person's GHL create, echoes) included, and none arrived for 2 s; the number
    still unfinished (0 when settled)."""
    conn = await asyncpg.connect(sync_url(db))
    try:
        deadline, quiet, last = time.monotonic() + timeout, 0, -1
        while True:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM webhook_events) + (SELECT count(*) FROM texting_webhook_events) AS n, "
                "(SELECT count(*) FROM webhook_events WHERE status NOT IN ('done', 'dead', 'quarantined')) + "
                "(SELECT count(*) FROM texting_webhook_events WHERE status NOT IN ('done', 'dead', 'quarantined')) "
                "AS open"
            )
            quiet = quiet + 1 if row["open"] == 0 and row["n"] == last else 0
            last = row["n"]
            if quiet >= 4 or time.monotonic() > deadline:
                return int(row["open"])
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def attempts_per_consumer(db: str) -> dict[str, int]:
    """Rule attempts each consumer made (``event_attempts`` rows, retries included): what its
    CPU seconds are divided by for the CPU per event."""
    conn = await asyncpg.connect(sync_url(db))
    try:
        rows = await conn.fetch("SELECT consumer, count(*) AS n FROM event_attempts GROUP BY consumer")
        return {r["consumer"]: int(r["n"]) for r in rows}
    finally:
        await conn.close()


async def optout_state(db: str, phones: list[str], ids: set[str]) -> tuple[int, int]:
    """(opted-out numbers the registry says are opted out, opt-out events done)."""
    conn = await asyncpg.connect(sync_url(db))
    try:
        registry = await conn.fetchval(
            "SELECT count(*) FROM optout_registry WHERE status = 'opted_out' AND phone_number = ANY($1::text[])", phones
        )
        done = await conn.fetchval(
            "SELECT (SELECT count(*) FROM webhook_events WHERE id = ANY($1::uuid[]) AND status = 'done') + "
            "(SELECT count(*) FROM texting_webhook_events WHERE id = ANY($1::uuid[]) AND status = 'done')",
            list(ids),
        )
        return int(registry), int(done)
    finally:
        await conn.close()


async def list_rows(db: str, provider_ids: set[str]) -> dict[str, Any]:
    """What the database says about the lists and the agent SMS refusals."""
    conn = await asyncpg.connect(sync_url(db))
    try:
        memberships = [
            dict(r)
            for r in await conn.fetch(
                "SELECT contact_id, agent_key, list_key, status, reason FROM contact_list_memberships"
            )
        ]
        outcomes = {
            r["id"]: (r["outcome"], r["outcome_reason"])
            for r in await conn.fetch(
                "SELECT id::text, outcome, outcome_reason FROM webhook_events WHERE id = ANY($1::uuid[])",
                list(provider_ids),
            )
        }
        return {"memberships": memberships, "outcomes": outcomes}
    finally:
        await conn.close()


def make_chaos(
    args: argparse.Namespace,
    procs: dict[str, list[subprocess.Popen[bytes]]],
    start: Any,
    nats_server: EmbeddedNats,
    pg: EmbeddedPostgres,
    sandbox: str,
    log: list[str],
) -> None:
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
            httpx.post(
                f"{sandbox}/_sandbox/faults", json={"vendor": "ghl", "count": 30, "status": 429, "retry_after": 1}
            )
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
    log += [
        f"{kills} consumer SIGKILLs (every {args.kill_every:g} s, replaced at once)",
        "NATS killed and restarted once",
        "PostgreSQL stopped and restarted once",
        "GHL 429 ×30 and 503 ×30 bursts",
    ]


async def sandbox_request_rate(sandbox: str, seconds: float, in_flight: int = 32) -> float:
    """GHL duplicate searches per second the fake vendor answers (read-only, OpenAPI-checked)."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(
        base_url=f"{sandbox}/ghl", headers=GHL, timeout=10, limits=httpx.Limits(max_connections=in_flight)
    ) as client:

        async def worker(w: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                answer = await client.get(
                    "/contacts/search/duplicate",
                    params={"locationId": "ghlLocationDemo00001", "number": f"+1555000{w:04d}"},
                )
                assert answer.status_code == 200, answer.text
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(in_flight)))
        return done / (time.perf_counter() - start)


async def raw_limits(nats_url: str, db_url: str, sandbox: str, seconds: float = 3.0) -> dict[str, float]:
    """The servers' own ceilings, measured on this run's servers before the load starts."""
    limits = {
        "JetStream acked publish (32 in flight)": await js_publish_rate(nats_url, seconds),
        "PostgreSQL single-row insert (32 connections)": await pg_insert_rate(db_url, seconds),
        "sandbox GHL duplicate search (32 in flight)": await sandbox_request_rate(sandbox, seconds),
    }
    conn = await asyncpg.connect(sync_url(db_url))
    await conn.execute("DROP TABLE IF EXISTS bench_raw")
    await conn.close()
    return limits


def server_cpu(pg_data: Path, nats_pid: int | None) -> dict[str, tuple[int | None, float]]:
    """CPU seconds used so far by the servers, with the pid they were read from (a restart
    by the chaos makes a difference meaningless): PostgreSQL is its postmaster, the backends
    it has reaped (cutime/cstime) and those still running; NATS the nats-server process."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: int) -> list[str] | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    found: dict[str, tuple[int | None, float]] = {}
    try:
        postmaster = int((pg_data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        postmaster = None
    fields = stat(postmaster) if postmaster else None
    if fields is None:
        found["postgres"] = (None, 0.0)
    else:
        total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        for entry in Path("/proc").iterdir():
            child = stat(int(entry.name)) if entry.name.isdigit() else None
            if child is not None and child[1] == str(postmaster):  # field 4: ppid
                total += int(child[11]) + int(child[12])
        found["postgres"] = (postmaster, total / tick)
    nats = stat(nats_pid) if nats_pid else None
    found["nats"] = (nats_pid, (int(nats[11]) + int(nats[12])) / tick) if nats else (None, 0.0)
    return found


def optout_effects(
    listed: list[Listed],
    lazy: Lazy,
    gate: dict[str, Any],
    sends: list[dict[str, Any]],
    db: dict[str, Any],
    calls: list[dict[str, Any]],
    aloware_lists: list[dict[str, Any]],
    aloware_contacts: list[dict[str, Any]],
    ghl_contacts: list[dict[str, Any]],
    zeros: dict[str, int],
    facts: dict[str, str],
) -> dict[str, tuple[int, int, int]]:
    """The opt-out part of the ledger: (got, expected, twice) rows, the counts that must be 0
    in ``zeros``, what is reported only in ``facts``. Numbers are compared in E.164, as the
    gate compares them."""
    opted = {c.phone for c in listed if c.opt_out}
    others = {c.phone for c in listed if not c.opt_out}
    by_phone_alo: dict[str, set[str]] = {}
    for c in aloware_contacts:
        if (phone := to_e164(c.get("phone_number"))) is not None:
            by_phone_alo.setdefault(phone, set()).add(str(c["id"]))
    by_phone_ghl: dict[str, set[str]] = {}
    for c in ghl_contacts:
        if (phone := to_e164(c.get("phone"))) is not None:
            by_phone_ghl.setdefault(phone, set()).add(str(c["id"]))

    def alo_ids(phones: set[str]) -> set[str]:
        return {i for p in phones for i in by_phone_alo.get(p, set())}

    def ghl_ids(phones: set[str]) -> set[str]:
        return {i for p in phones for i in by_phone_ghl.get(p, set())}

    on_lists = [(str(item["name"]).upper(), str(i)) for item in aloware_lists for i in item["contact_ids"]]
    active = [(r["contact_id"], r["agent_key"], r["list_key"]) for r in db["memberships"] if r["status"] == "active"]
    listed_alo, listed_ghl = alo_ids(opted | others), ghl_ids(opted | others)
    zeros["list memberships of opted-out numbers: Aloware lists"] = sum(1 for _, i in on_lists if i in alo_ids(opted))
    zeros["list memberships of opted-out numbers: active contact_list_memberships rows"] = sum(
        1 for g, _, _ in active if g in ghl_ids(opted)
    )
    zeros["list memberships of contacts not list-managed (echoes change no list): Aloware / rows"] = sum(
        1 for _, i in on_lists if i not in listed_alo
    ) + sum(1 for g, _, _ in active if g not in listed_ghl)

    sends_seen = [
        c
        for c in calls
        if c["vendor"] == "verity" and c["path"].endswith("/send-message") and isinstance(c["body"], dict)
    ]
    zeros["Verity send-message requests for opted-out numbers"] = sum(
        1 for c in sends_seen if to_e164(c["body"].get("to")) in opted
    )

    def reached(prefix: str, status: int | None) -> tuple[int, int, int]:
        hits = [
            to_e164(c["body"].get("to"))
            for c in sends_seen
            if str(c["body"].get("body", "")).startswith(prefix)
            and to_e164(c["body"].get("to")) in others
            and status in (None, c["status"])
        ]
        return len(set(hits)), len(others), len(hits) - len(set(hits))

    want = {
        (f"DF_{c.agent}_{key}", alo)
        for c in listed
        if not c.opt_out
        for key in ("NEW_LEADS", "CALL_NOW")
        for alo in by_phone_alo.get(c.phone, {"(no Aloware contact)"})
    }  # (list, Aloware id) to be on
    placed = [entry for entry in on_lists if entry in want]
    want_rows = {
        (g, c.agent, key)
        for c in listed
        if not c.opt_out
        for g in by_phone_ghl.get(c.phone, {"?"})
        for key in ("NEW_LEADS", "CALL_NOW")
    }
    numbers = {c.n: c for c in listed}
    refused_m2 = sum(
        1
        for r in sends
        if r["id"]
        and numbers[int(r["kind"]["messageId"].rsplit("-", 1)[1])].opt_out
        and db["outcomes"].get(r["id"]) == ("skipped", "recipient_opted_out")
    )
    gateway = [a for a in lazy.actions if a["kind"] == "gateway_send"]
    refused_gw = sum(
        1 for a in gateway if numbers[a["n"]].opt_out and a["status"] == 403 and a["code"] == "recipient_opted_out"
    )
    # a row exists only once an add was made: an opted-out contact with none was never added
    # (its opt-out came first and O-5b refused the add); with rows, it was on a list first
    was_on = {r["contact_id"] for r in db["memberships"]} & ghl_ids(opted)
    removed = {r["contact_id"] for r in db["memberships"] if r["reason"] == "opted_out"} & was_on
    creates = [a for a in lazy.actions if a["kind"] == "ghl_human_create"]
    # not a check (a contact event racing the opt-out may remove it first, reason ``removed``):
    # how many opt-outs had a list to clean, which the zero rows below then hold for
    facts["opted-out contacts on a list before their opt-out (removed by the opt-out itself) / never added"] = (
        f"{len(was_on)} ({len(removed)}) / {len(opted) - len(was_on)}"
    )
    return {
        "list-managed contacts created in GHL by a person": (
            sum(1 for a in creates if a["status"] == 201),
            len(listed),
            0,
        ),
        "opt-outs in the registry before phase 2 (opted_out)": (gate.get("registry", 0), len(opted), 0),
        "other list-managed contacts on their 2 lists: Aloware": (
            len(set(placed)),
            len(want),
            len(placed) - len(set(placed)),
        ),
        "other list-managed contacts on their 2 lists: active rows": (len(want_rows & set(active)), len(want_rows), 0),
        "agent SMS (M-2) to opted-out numbers refused (recipient_opted_out)": (
            refused_m2,
            sum(
                1
                for r in sends
                if r["kind"].get("type") == "SMS" and numbers[int(r["kind"]["messageId"].rsplit("-", 1)[1])].opt_out
            ),
            0,
        ),
        "gateway sends to opted-out numbers refused (403 recipient_opted_out)": (
            refused_gw,
            sum(1 for a in gateway if numbers[a["n"]].opt_out),
            0,
        ),
        "sends to other numbers: agent SMS (M-2) sent by Verity": reached("bench agent sms", 200),
        "sends to other numbers: gateway requests reaching Verity's send-message": reached("bench gateway", None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="events per second (open loop)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--replicas", type=int, default=1, help="processes of each sync consumer")
    parser.add_argument("--chaos", action="store_true", help="kill consumers, restart NATS and PostgreSQL")
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument(
        "--edge", type=float, default=None, help="share of edge inputs in the mix (default 0.05 with --chaos, else 0)"
    )
    parser.add_argument(
        "--optouts",
        type=float,
        default=0.05,
        help="share of contacts that are list-managed and opt out (STOP, DNC, DND; 0: none, no call lists, no phase 2)",
    )
    parser.add_argument(
        "--listed",
        type=float,
        default=0.2,
        help="list-managed contacts, as a share of the mix's contacts (with --optouts)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds to wait for the accepted events to finish (default: 4 × --seconds, at least 120)",
    )
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    total = int(args.rate * args.seconds)
    contacts = max(1, int(total / 1.3 / 4))
    edge_share = args.edge if args.edge is not None else (0.05 if args.chaos else 0.0)
    events = with_edges(plan(contacts, random.Random(7))[:total], edge_share, random.Random(11))
    listed = plan_listed(contacts, args.listed, args.optouts)
    events = with_listed(events, listed, args.rate, random.Random(13))
    work = Path(tempfile.mkdtemp(prefix="dfm-bench-e2e-"))
    nats_server = EmbeddedNats(store_dir=work / "nats", sync_always=True).start()
    pg = EmbeddedPostgres(work / "pg", delete_on_stop=not args.chaos).start()  # chaos restarts it
    key, _ = generate_ed25519()
    (work / "key.pem").write_text(private_pem(key))
    sandbox_port, ingress_port, gateway_port = free_port(), free_port(), free_port()
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    env = {
        **stack_env(
            dict(os.environ),
            nats_url=nats_server.url,
            database_url=pg.url(),
            sandbox_port=sandbox_port,
            ingress_port=ingress_port,
            key_file=work / "key.pem",
            public_key=public_pem(key),
        ),
        "GHL_RATE_LIMIT_PER_10S": "1000000",
        # a killed process's messages come back within seconds; retries stay short under chaos
        "DFM_CONSUMER_ACK_WAIT_S": "5",
        "RETRY_BASE_DELAY_S": "0.5",
        "RETRY_MAX_DELAY_S": "5",
    }
    if listed:  # the call lists, and the gateway for phase 2's sends (its rate limit off like the others)
        env |= {
            "ENABLE_POWER_DIALER_LISTS": "true",
            "GATEWAY_PORT": str(gateway_port),
            "DF_MIDDLEWARE_API_KEY": GATEWAY_KEY,
            "VERITY_CATALOG_PATH": str(CATALOG),
            "RATE_LIMIT_MAX": "1000000",
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
        answer = httpx.get(
            f"http://127.0.0.1:{ingress_port}/leadconnector/oauth",
            params={"code": "code-bench", "state": sign_state(settings)},
        )
        assert answer.status_code == 200, answer.text
        gateway = f"http://127.0.0.1:{gateway_port}" if listed else None
        if listed:
            wait_http(f"{gateway}/api/verity", start("gateway"))  # 401 without a key: it is up
            # the admin endpoint only queues jobs.agents_seed (202) and the bench runs no jobs
            # service: seed the way `dfm agents seed` does, in a process of its own, and wait for it
            seeded = subprocess.run(
                [sys.executable, "-m", "services.cli", "agents", "seed"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert seeded.returncode == 0, seeded.stderr[-2000:]
            for name in LIST_NAMES:  # an Aloware admin made the lists (L-4 finds them by name)
                httpx.post(f"{sandbox}/_sandbox/aloware/lists", json={"name": name}).raise_for_status()
        lazy = Lazy(sandbox, gateway, settings, listed)
        time.sleep(2)  # consumers bind to their durables
        raw = asyncio.run(raw_limits(nats_server.url, pg.url(), sandbox))
        skip_calls = len(httpx.get(f"{sandbox}/_sandbox/calls").json())  # the ledger counts the load's only
        pids = processes.pids()
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        nats_pid = nats_server.process.pid if nats_server.process else None
        servers_before = server_cpu(work / "pg", nats_pid)
        chaos_log: list[str] = []
        chaos = (
            threading.Thread(
                target=make_chaos,
                args=(args, processes.by_service, start, nats_server, pg, sandbox, chaos_log),
                daemon=True,
            )
            if args.chaos
            else None
        )
        if chaos is not None:
            chaos.start()
        run = asyncio.run(drive(f"http://127.0.0.1:{ingress_port}", settings, events, args.rate, lazy))
        if chaos is not None:
            chaos.join()
        accepted = {r["id"] for r in run["results"] if r["answer"] == "accepted"}
        print(f"sent {len(run['results'])} in {run['elapsed']:.0f} s", file=sys.stderr)
        settle_s = args.settle or max(120.0, args.seconds * 4)
        finished = asyncio.run(settle(pg.url(), accepted, timeout=settle_s))
        phase2: dict[str, Any] = {"results": [], "elapsed": 0.0}
        opted = [c.phone for c in listed if c.opt_out]
        optout_ids = {
            r["id"]
            for r in run["results"]
            if r["answer"] == "accepted" and str(events[r["i"]][0]).startswith("optout_")
        }
        gate: dict[str, Any] = {}
        if listed:
            # phase 2 only once every opt-out is processed: every event finished (the sandbox's
            # own webhooks too), the opt-out events done, the registry saying opted out
            gate["open after phase 1"] = asyncio.run(settle_all(pg.url(), timeout=settle_s))
            gate["registry"], gate["optouts done"] = asyncio.run(optout_state(pg.url(), opted, optout_ids))
            gate["ready"] = (
                gate["open after phase 1"] == 0
                and gate["registry"] == len(opted)
                and gate["optouts done"] == len(optout_ids)
            )
            print(f"phase 2 gate: {gate}", file=sys.stderr)
            if gate["ready"]:
                phase2 = asyncio.run(
                    drive(f"http://127.0.0.1:{ingress_port}", settings, plan_sends(listed), args.rate, lazy)
                )
                sent2 = {r["id"] for r in phase2["results"] if r["answer"] == "accepted"}
                finished |= asyncio.run(settle(pg.url(), sent2, timeout=settle_s))
                accepted |= sent2
                gate["open after phase 2"] = asyncio.run(settle_all(pg.url(), timeout=settle_s))
        lists_db = asyncio.run(list_rows(pg.url(), {r["id"] for r in phase2["results"] if r["id"]}))
        attempts = asyncio.run(attempts_per_consumer(pg.url()))
        # a process killed by the chaos took its CPU count with it: no figure for its service
        cpu = {name: cpu_seconds(p) - before[name] if processes.pids()[name] == p else None for name, p in pids.items()}
        servers_after = server_cpu(work / "pg", nats_server.process.pid if nats_server.process else None)
        server_cpu_s = {
            name: after - servers_before[name][1] if pid is not None and pid == servers_before[name][0] else None
            for name, (pid, after) in servers_after.items()
        }
        calls = httpx.get(f"{sandbox}/_sandbox/calls").json()[skip_calls:]
        ghl_contacts = httpx.get(f"{sandbox}/_sandbox/ghl/contacts").json()
        conversations = httpx.get(f"{sandbox}/_sandbox/ghl/conversations").json()
        aloware_lists = httpx.get(f"{sandbox}/_sandbox/aloware/lists").json()
        aloware_contacts = httpx.get(f"{sandbox}/_sandbox/aloware/contacts").json()
    finally:
        processes.stop_all()
        nats_server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    results = run["results"] + phase2["results"]
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
    late = sum(
        len(ids) - 1
        for ids in by_body.values()
        if any(finished.get(i, ("", None))[0] in ("done", "dead", "quarantined") for i in ids)
    )
    missing = sum(
        1
        for ids in by_body.values()
        if not any(finished.get(i, ("", None))[0] in ("done", "dead", "quarantined") for i in ids)
    )
    unfinished = {s: states.count(s) for s in set(states) - {"done", "dead", "quarantined"}}
    if late:
        unfinished["late duplicates (one row per dedupe key)"] = late
    phones = {b["body"]["phone_number"] for k, _, b in events if k == "aloware_contact"}
    calls_sent = {b["body"]["id"] for k, _, b in events if k == "call"}
    texts_sent = {b["messageId"] for k, _, b in events if k == "text"}
    notes = [
        c
        for c in calls
        if c["vendor"] == "ghl" and c["method"] == "POST" and c["path"].endswith("/notes") and c["status"] == 201
    ]
    messages = [m for m in conversations["messages"] if m.get("body", "").startswith("hello ")]
    edge_texts = {b["body"].replace("\u0000", "\ufffd") for k, _, b in events if k == "edge_text"}
    edge_messages = [m["body"] for m in conversations["messages"] if m.get("body", "").startswith("edge ")]
    ghl_phones = [c.get("phone") for c in ghl_contacts]
    effects = {
        "ghl contacts (one per phone)": (
            len(set(ghl_phones) & phones),
            len(phones),
            len(ghl_phones) - len(set(ghl_phones)),
        ),
        "call notes (one per call)": (len(notes), len(calls_sent), max(0, len(notes) - len(calls_sent))),
        "GHL messages (one per text)": (
            len({m["body"] for m in messages}),
            len(texts_sent),
            len(messages) - len({m["body"] for m in messages}),
        ),
        "edge texts: GHL messages (NUL as U+FFFD)": (
            len(set(edge_messages) & edge_texts),
            len(edge_texts),
            len(edge_messages) - len(set(edge_messages)),
        ),
        "edge bodies refused with 400": (edges_400, len(refused_edges), 0),
    }
    zeros: dict[str, int] = {}  # each must be 0
    facts: dict[str, str] = {}  # reported, not checked
    if listed:
        effects |= optout_effects(
            listed,
            lazy,
            gate,
            phase2["results"],
            lists_db,
            calls,
            aloware_lists,
            aloware_contacts,
            ghl_contacts,
            zeros,
            facts,
        )
    balanced = (
        sent == len(accepted) + duplicate + rejected
        and missing == 0
        and dead == 0
        and done + quarantined + late == len(accepted)
        and all(got == want and twice == 0 for got, want, twice in effects.values())
        and not any(zeros.values())
        and (not listed or gate.get("ready", False))
    )
    latencies = sorted(
        (done_at - r["scheduled"]) * 1000
        for r in results
        if r["id"] in finished and r["answer"] == "accepted" and (done_at := finished[r["id"]][1]) is not None
    )
    vendor_calls = len([c for c in calls if c["vendor"] in ("ghl", "aloware", "verity")])
    by_kind: dict[str, list[float]] = {}  # phase 1 only: where the tail is
    for r in run["results"]:
        if r["id"] in finished and r["answer"] == "accepted" and (done_at := finished[r["id"]][1]) is not None:
            by_kind.setdefault(str(events[r["i"]][0]), []).append((done_at - r["scheduled"]) * 1000)

    def pct(p: float, values: list[float] | None = None) -> float:
        values = latencies if values is None else sorted(values)
        return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")

    every = [*cpu.values(), *server_cpu_s.values()]
    host = None if None in every else [v for v in every if v is not None]
    lines = [
        f"### e2e ledger — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python bench/e2e/run.py --rate {args.rate:g} --seconds {args.seconds:g} --replicas {args.replicas}"
        f"{' --chaos' if args.chaos else ''}{f' --edge {args.edge:g}' if args.edge is not None else ''}"
        f"{f' --optouts {args.optouts:g}' if args.optouts != 0.05 else ''}"
        f"{f' --listed {args.listed:g}' if args.listed != 0.2 else ''}"
        f"{f' --settle {args.settle:g}' if args.settle else ''}`",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; every "
        "process, the sandbox vendors and the generator on one host; rate limiting off",
        f"- mix: {contacts} contacts × (Aloware create, update, call, inbound text), ~30 % repeated sends"
        + (
            f", {edge_share:.0%} edge inputs (NUL, 2 kB ids, lone surrogates, deep nesting, UTF-16)"
            if edge_share
            else ""
        ),
        *(
            [
                (
                    f"- lists and opt-outs: {len(listed)} list-managed contacts (created in GHL by a person with an owner "
                    f"and call_now, then a ContactTagUpdate), {len(opted)} of them opted out a few seconds later in the same "
                    f"loop ({', '.join(f'{sum(1 for c in listed if c.opt_out == k)} {name}' for k, name in zip(OPT_OUT_KINDS, ('texting STOP', 'Aloware DNC', 'GHL DND'), strict=True))}); "
                    f"phase 2, once every phase-1 event was finished and the registry held every opt-out: "
                    f"{len(phase2['results'])} agent SMS (M-2) and "
                    f"{sum(1 for a in lazy.actions if a['kind'] == 'gateway_send')} gateway /apisms sends, one of each per "
                    f"list-managed number, in {phase2['elapsed']:.0f} s; ENABLE_POWER_DIALER_LISTS=true"
                )
            ]
            if listed
            else []
        ),
        *([f"- chaos: {'; '.join(chaos_log)}"] if args.chaos else []),
        "",
        "| ledger | value |",
        "| --- | ---: |",
        f"| sent / accepted / duplicate / rejected | {sent} / {len(accepted)} / {duplicate} / {rejected} |",
        f"| done / dead / quarantined / missing | {done} / {dead} / {quarantined} / {missing}"
        + (f" ({unfinished})" if unfinished else "")
        + " |",
        *[f"| {name}: got / expected / twice | {g} / {w} / {t} |" for name, (g, w, t) in effects.items()],
        *[f"| {name} (must be 0) | {n} |" for name, n in zeros.items()],
        *[f"| {name} | {value} |" for name, value in facts.items()],
        f"| balanced | {'yes' if balanced else 'NO'} |",
        "",
        "| measurement | value |",
        "| --- | ---: |",
        (
            f"| offered rate / achieved send rate (phase 1) | {args.rate:g} / "
            f"{len(run['results']) / run['elapsed']:.0f} events/s |"
        ),
        f"| latency scheduled send → done p50 / p95 / p99 / max | {pct(0.5):.0f} / {pct(0.95):.0f} / "
        f"{pct(0.99):.0f} / {max(latencies) if latencies else float('nan'):.0f} ms |",
        "| latency p50 / p99 / max by kind (phase 1) | "
        + ", ".join(
            f"{kind} {pct(0.5, v):.0f} / {pct(0.99, v):.0f} / {max(v):.0f} ms ({len(v)})"
            for kind, v in sorted(by_kind.items())
        )
        + " |",
        f"| vendor calls per accepted event | {vendor_calls / max(1, len(accepted)):.2f} |",
        f"| CPU seconds | {', '.join(f'{k} ' + (f'{v:.1f}' if v is not None else 'n/a (killed)') for k, v in cpu.items())} |",
        f"| CPU seconds, servers (same window) | {', '.join(f'{k} ' + (f'{v:.1f}' if v is not None else 'n/a (restarted)') for k, v in server_cpu_s.items())} |",
        (
            f"| CPU ms per send, whole host (ours + servers; {sent} sends) | {1000 * sum(host) / max(1, sent):.1f} |"
            if host is not None
            else "| CPU ms per send, whole host | n/a (a process was restarted) |"
        ),
        "| CPU ms per rule attempt (CPU seconds / event_attempts rows) | "
        + ", ".join(
            f"{k} {1000 * v / attempts[k]:.1f} ({attempts[k]} attempts)"
            for k, v in cpu.items()
            if v is not None and attempts.get(k)
        )
        + " |",
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
