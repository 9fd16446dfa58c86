"""The recorder isolates rows PostgreSQL cannot store (ARCHITECTURE.md invariants 3 and 4).

Such a message can reach the stream without passing the ingress's own checks (an outbox
drain, a replay, a hand-published message). One of them in a batch must not take the
batch-mates with it: the good events get their rows at once, the bad one is terminated with
a ``dead_letters`` row saying why, and nothing is redelivered. A database that is away is a
different matter: the whole batch waits and is recorded once it is back.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import asyncpg
import nats
from nats.js import JetStreamContext

from contracts.envelope import WebhookEvent
from contracts.streams import RECORDER, WEBHOOKS_STREAM
from services.infra.broker import ensure_topology
from services.infra.db.session import create_engine, sync_url
from services.infra.settings import Settings
from services.recorder.service import Recorder
from services.tooling.embedded import EmbeddedNats, free_port
from tests.support.ingress_rig import running_recorder
from tests.support.sync_rig import eventually


def texting(n: int, **payload: Any) -> WebhookEvent:
    return WebhookEvent.model_validate(
        {
            "source": "texting",
            "event_name": "message.received",
            "event_type": "message_received",
            "canonical_type": "message.inbound",
            "entity_type": "message",
            "entity_id": f"m{n}",
            "dedupe_key": f"texting:message.received:{uuid.uuid4().hex}",
            "auth": {"method": "hmac", "verified": True},
            "payload": {"eventType": "message.received", "n": n, **payload},
        }
    )


def ghl(n: int, dedupe_key: str | None = None) -> WebhookEvent:
    return WebhookEvent.model_validate(
        {
            "source": "ghl",
            "event_name": "ContactUpdate",
            "event_type": "contact_update",
            "canonical_type": "contact.updated",
            "entity_type": "contact",
            "entity_id": f"c{n}",
            "dedupe_key": dedupe_key or f"ghl:ContactUpdate:{uuid.uuid4().hex}",
            "auth": {"method": "ed25519", "verified": True},
            "location_id": "ghlLocationDemo00001",
            "payload": {"type": "ContactUpdate", "id": f"c{n}", "locationId": "ghlLocationDemo00001"},
        }
    )


async def publish(js: JetStreamContext, events: list[WebhookEvent]) -> dict[uuid.UUID, int]:
    """Publish the envelopes as the ingress would; their stream sequences by event id."""
    seqs = {}
    for event in events:
        ack = await js.publish(event.subject, event.to_bytes(), headers=event.nats_headers())
        seqs[event.event_id] = ack.seq
    return seqs


async def query(db: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(sync_url(db))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def recorded_ids(db: str) -> set[uuid.UUID]:
    rows = await query(db, "SELECT id FROM texting_webhook_events UNION ALL SELECT id FROM webhook_events")
    return {r["id"] for r in rows}


async def test_poison_rows_are_dead_lettered_and_their_batch_mates_recorded(
    settings: Settings, nats_server: EmbeddedNats, clean_db: str
) -> None:
    nul = texting(2, text="before\u0000after")  # JSONB cannot hold U+0000
    long_key = ghl(4, dedupe_key="ghl:ContactUpdate:" + secrets.token_hex(1500))  # over the btree row limit
    good = [texting(1), ghl(3), texting(5), ghl(6)]
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings, consumers=(RECORDER,))
        # on the stream before the recorder starts: one fetch, one batch with the poison in it
        seqs = await publish(js, [good[0], nul, good[1], long_key, good[2], good[3]])
        async with running_recorder(settings):
            await eventually(lambda: _has_all(clean_db, {e.event_id for e in good}), timeout=10)
            letters = await eventually(lambda: _dead_letters(clean_db, 2), timeout=10)
            info = await eventually(lambda: _settled(js), timeout=10)
    finally:
        await nc.close()
    assert await recorded_ids(clean_db) == {e.event_id for e in good}
    by_event = {r["event_id"]: r for r in letters}
    assert set(by_event) == {nul.event_id, long_key.event_id}
    for event in (nul, long_key):
        row = by_event[event.event_id]
        assert (row["stream"], row["consumer"], row["kind"]) == (WEBHOOKS_STREAM, "recorder", "terminated")
        assert row["stream_seq"] == seqs[event.event_id] and row["subject"] == event.subject
        assert row["deliveries"] == 1
        assert row["reason"].startswith("recorder cannot store the event:"), row["reason"]
        assert "before" not in row["reason"] and "\x00" not in row["reason"]  # no payload text in the reason
    assert "UntranslatableCharacter" in by_event[nul.event_id]["reason"]
    assert "ProgramLimitExceeded" in by_event[long_key.event_id]["reason"]
    assert info.delivered.consumer_seq == 6  # one delivery each: no NAK of the good, no retry of the bad


async def test_a_database_that_is_away_holds_the_batch_rather_than_dead_lettering_it(
    settings: Settings, nats_server: EmbeddedNats, clean_db: str
) -> None:
    events = [texting(1), ghl(2), texting(3)]
    nc = await nats.connect(nats_server.url)
    # nothing listens on this port: connecting fails the way a restarting server does
    away = create_engine(
        settings.model_copy(update={"database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/x"})
    )
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings, consumers=(RECORDER,))
        await publish(js, events)
        sub = await js.pull_subscribe_bind(RECORDER.durable, stream=RECORDER.stream)
        batch = await sub.fetch(10, timeout=5)
        assert len(batch) == 3
        await Recorder(away).handle(batch)  # must not raise: the batch is NAKed for a retry
        async with running_recorder(settings):
            await eventually(lambda: _has_all(clean_db, {e.event_id for e in events}), timeout=15)
            info = await eventually(lambda: _settled(js), timeout=10)
        await sub.unsubscribe()
    finally:
        await away.dispose()
        await nc.close()
    assert info.delivered.consumer_seq == 6  # each delivered twice: NAKed, then recorded
    assert await query(clean_db, "SELECT * FROM dead_letters") == []


async def _has_all(db: str, ids: set[uuid.UUID]) -> bool:
    return ids <= await recorded_ids(db)


async def _dead_letters(db: str, count: int) -> list[dict[str, Any]] | None:
    rows = await query(db, "SELECT * FROM dead_letters ORDER BY stream_seq")
    return rows if len(rows) >= count else None


async def _settled(js: JetStreamContext) -> Any:
    info = await js.consumer_info(WEBHOOKS_STREAM, RECORDER.durable)
    return info if info.num_pending == 0 and info.num_ack_pending == 0 else None
