"""Fault tests with real processes: NATS SIGKILLed and restarted, PostgreSQL stopped."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import nats
import pytest

from contracts.envelope import WebhookEvent
from services.infra.settings import Settings
from services.infra.signing import hmac_hex
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres
from tests.conftest import TEST_SECRETS, create_database
from tests.support.ingress_rig import count_rows, running_ingress, running_recorder, stream_messages

SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]


def texting_body(n: int) -> bytes:
    return json.dumps(
        {
            "eventType": "message.received",
            "messageId": f"fault-{uuid.uuid4().hex}-{n}",
            "from": "+15555550101",
            "to": "+15555550100",
            "body": f"message {n}",
            "timestamp": "2026-01-01T00:00:00Z",
        }
    ).encode()


async def post_texting(client: httpx.AsyncClient, n: int) -> httpx.Response:
    body = texting_body(n)
    return await client.post(
        "/api/webhooks/texting", content=body, headers={"x-texting-signature": hmac_hex(SECRET, body)}
    )


def settings_for(nats_url: str, database_url: str, **extra: str) -> Settings:
    env = {**TEST_SECRETS, "NATS_URL": nats_url, "DATABASE_URL": database_url, "DFM_PUBLISH_TIMEOUT": "0.5", **extra}
    return Settings(**{k.lower(): v for k, v in env.items()})


@pytest.mark.slow
async def test_nats_sigkill_under_load_loses_no_accepted_event(tmp_path: Path, clean_db: str) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    settings = settings_for(server.url, clean_db)
    accepted: set[str] = set()
    refused = 0
    try:
        async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def send(start: int, count: int) -> None:
                nonlocal refused
                for n in range(start, start + count):
                    response = await post_texting(client, n)
                    if response.status_code == 200:
                        accepted.add(response.json()["id"])
                    else:
                        assert response.status_code in (429, 503), response.text
                        refused += 1

            senders = [asyncio.create_task(send(i * 1000, 150)) for i in range(4)]
            async with asyncio.timeout(60):
                while len(accepted) < 100:  # kill while the stream of webhooks is flowing
                    await asyncio.sleep(0.005)
            server.kill()
            killed_at = len(accepted)
            async with asyncio.timeout(60):
                while len(accepted) < killed_at + 100:  # these can only go to the outbox
                    await asyncio.sleep(0.01)
            assert await count_rows(clean_db, "ingress_outbox") > 0
            server.start()  # same port, same store
            await asyncio.gather(*senders)

            async with asyncio.timeout(60):  # the ingress drains the outbox by itself
                while await count_rows(clean_db, "ingress_outbox", "published_at IS NULL"):
                    await asyncio.sleep(0.1)
        on_stream = {
            WebhookEvent.from_bytes(m.data).event_id.hex
            for m in await stream_messages(server.url, "webhooks.texting.>")
        }
    finally:
        server.stop()
    assert refused == 0
    assert len(accepted) == 600
    missing = {uuid.UUID(i).hex for i in accepted} - on_stream
    assert missing == set(), f"{len(missing)} accepted events are not on the stream"


@pytest.mark.slow
async def test_nats_and_postgres_down_answers_429_with_retry_after(tmp_path: Path, base_env: dict[str, str]) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    pg = EmbeddedPostgres(tmp_path / "pg", delete_on_stop=True).start()
    database_url = await create_database(pg.url())
    from services.infra.db import migrate

    await asyncio.to_thread(migrate.upgrade, database_url, "head")
    settings = settings_for(server.url, database_url, VERITY_WEBHOOK_SECRET=SECRET)
    try:
        async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=15) as client:
            assert (await post_texting(client, 1)).status_code == 200
            server.kill()
            pg.stop()
            texting = await post_texting(client, 2)
            assert texting.status_code == 503
            assert texting.headers["retry-after"] == "60"
            ghl = await client.post(
                "/api/webhooks/ghl",
                content=b'{"event":"contact.updated","id":"c1"}',
                params={"token": TEST_SECRETS["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(",")[0]},
            )
            assert ghl.status_code == 429
            assert ghl.headers["retry-after"] == "60"
            assert ghl.json()["status"] == "unavailable"
            health = await client.get("/api/health")
            assert health.status_code == 503
            server.start()
            async with asyncio.timeout(30):  # reconnects by itself; the process never died
                while (response := await post_texting(client, 3)).status_code != 200:
                    await asyncio.sleep(0.1)
            assert response.json()["status"] == "accepted"
    finally:
        server.stop()
        pg.stop()


async def test_recorder_recognises_duplicates_beyond_the_stream_window(
    settings: Settings, nats_server: EmbeddedNats, clean_db: str
) -> None:
    dedupe = f"texting:message.received:{uuid.uuid4().hex}:x"
    events = [
        WebhookEvent.model_validate(
            {
                "source": "texting",
                "event_name": "message.received",
                "event_type": "message_received",
                "canonical_type": "message.inbound",
                "entity_type": "message",
                "entity_id": "m1",
                "dedupe_key": dedupe,
                "auth": {"method": "hmac", "verified": True},
                "payload": {"eventType": "message.received", "n": n},
            }
        )
        for n in range(2)
    ]
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        async with running_recorder(settings) as recorder:
            for n, event in enumerate(events):
                # a different Nats-Msg-Id stands for "outside the duplicate window"
                headers = {**event.nats_headers(), "Nats-Msg-Id": f"{dedupe}:{n}"}
                await js.publish(event.subject, event.to_bytes(), headers=headers)
            await js.publish("webhooks.texting.message.broken", b"{not an envelope")
            neighbour = events[0].model_copy(update={"event_id": uuid.uuid4(), "dedupe_key": dedupe + ":n"})
            await js.publish(neighbour.subject, neighbour.to_bytes(), headers=neighbour.nats_headers())
            async with asyncio.timeout(15):
                while recorder.recorded + recorder.duplicates < 3:
                    await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert await count_rows(clean_db, "texting_webhook_events", "dedupe_key = $1", dedupe) == 1
    assert await count_rows(clean_db, "texting_webhook_events", "dedupe_key = $1", dedupe + ":n") == 1
    assert recorder.duplicates == 1
