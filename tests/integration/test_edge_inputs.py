"""Bodies real senders produce that PostgreSQL, NATS or the consumers' parser cannot take:
each gets a 4xx with a reason, or a 2xx after which the event is stored (ARCHITECTURE.md §3,
"2xx means it will be processed"). And the outbox drains past a row the stream refuses."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.envelope import WebhookEvent
from contracts.json_body import parse_body
from services.infra.outbox import drain_outbox
from services.infra.settings import Settings
from services.infra.signing import hmac_hex
from services.jobs.alerts import check_latency_and_dead
from services.tooling.embedded import NATS_MAX_PAYLOAD, EmbeddedNats
from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import count_rows, running_ingress, running_recorder, stream_messages
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import eventually

SECRET = TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]
ADMIN = {"X-DF-ADMIN-SECRET": TEST_SECRETS["DF_ADMIN_SECRET"].split(",")[0]}
WF_TOKEN = TEST_SECRETS["GHL_WORKFLOW_WEBHOOK_TOKEN"].split(",")[0]


def texting(body: bytes) -> dict[str, str]:
    return {"x-texting-signature": hmac_hex(SECRET, body), "content-type": "application/json"}


def texting_event(**fields: Any) -> dict[str, Any]:
    return {
        "eventType": "message.received",
        "messageId": f"edge-{uuid.uuid4().hex}",
        "from": "+15555550101",
        "to": "+15555550100",
        "body": "hello",
        "timestamp": "2026-01-01T00:00:00Z",
        **fields,
    }


def ghl_contact(size: int) -> bytes:
    """A GHL workflow contact update whose body is about ``size`` bytes."""
    body = {
        "type": "contact.updated",
        "contactId": f"edge-{uuid.uuid4().hex}",
        "locationId": TEST_SECRETS["GHL_LOCATION_ID"],
        "notes": "",
    }
    body["notes"] = "n" * (size - len(json.dumps(body)))
    return json.dumps(body).encode()


def nested(levels: int) -> bytes:
    return (
        '{"eventType":"message.received","messageId":"deep","x":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"
    ).encode()


UNPARSEABLE: dict[str, tuple[bytes, str]] = {
    "lone surrogate": (b'{"eventType":"message.received","body":"\\ud800"}', "invalid_unicode_escape"),
    "lone surrogate in a key": (b'{"eventType":"message.received","\\udfff":1}', "invalid_unicode_escape"),
    "201 levels (the consumers' parser stops at 200)": (nested(201), "json_too_deep"),
    "65 levels (over WEBHOOK_MAX_JSON_DEPTH)": (nested(65), "json_too_deep"),
    "100,000 levels": (nested(100_000), "json_too_deep"),
    "a number that is infinite as a double": (b'{"eventType":"message.received","n":1e400}', "non_finite_number"),
    "NaN": (b'{"eventType":"message.received","n":NaN}', "non_finite_number"),
    "UTF-16": ('{"eventType":"message.received"}'.encode("utf-16"), "body_not_utf8"),
    "Latin-1 bytes": ('{"eventType":"message.received","body":"caf\u00e9"}'.encode("latin-1"), "body_not_utf8"),
    "encoded surrogate bytes": (b'{"eventType":"message.received","body":"\xed\xa0\x80"}', "body_not_utf8"),
    "an array": (b"[1,2]", "body_must_be_a_json_object"),
}


@pytest.mark.parametrize("case", list(UNPARSEABLE))
async def test_bodies_nothing_downstream_can_take_get_400_with_the_reason(settings: Settings, case: str) -> None:
    body, reason = UNPARSEABLE[case]
    async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        answer = await client.post("/api/webhooks/texting", content=body, headers=texting(body))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == reason
    assert await stream_messages(settings.nats_url[0], "webhooks.>") == []


async def test_nul_characters_and_kilobyte_ids_are_accepted_and_stored(settings: Settings, clean_db: str) -> None:
    stop = texting_event(eventType="optout.stop", body="STOP\u0000", conversationId="c\u0000")
    long_id = texting_event(messageId="m" * 5000, conversationId="c" * 5000)
    ghl_long = json.dumps(
        {
            "type": "contact.updated",
            "contactId": "x" * 4000,
            "locationId": TEST_SECRETS["GHL_LOCATION_ID"],
            "firstName": "A\u0000B",
        }
    ).encode()
    async with (
        running_recorder(settings),
        running_ingress(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        ids = []
        for payload in (stop, long_id):
            body = json.dumps(payload).encode()
            answer = await client.post("/api/webhooks/texting", content=body, headers=texting(body))
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        answer = await client.post(
            "/api/webhooks/ghl",
            content=ghl_long,
            params={"token": WF_TOKEN},
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        ghl_id = answer.json()["id"]

        async def stored() -> bool:
            return (
                await count_rows(clean_db, "texting_webhook_events") == 2
                and await count_rows(clean_db, "webhook_events") == 1
            )

        await eventually(stored, timeout=15)
    [row] = await fetch(clean_db, "SELECT * FROM texting_webhook_events WHERE id = $1::uuid", ids[0])
    assert row["payload_json"] and json.loads(row["payload_json"])["body"] == "STOP\ufffd"
    [row] = await fetch(clean_db, "SELECT * FROM texting_webhook_events WHERE id = $1::uuid", ids[1])
    assert len(row["dedupe_key"]) <= 512 and len(row["entity_id"]) <= 256
    assert len(row["conversation_id"]) <= 256
    assert json.loads(row["payload_json"])["messageId"] == "m" * 5000  # the full value is kept
    [row] = await fetch(clean_db, "SELECT * FROM webhook_events WHERE id = $1::uuid", ghl_id)
    assert len(row["entity_id"]) <= 256 and len(row["dedupe_key"]) <= 512
    assert bytes(row["payload_raw"]) == ghl_long  # the signed bytes, untouched
    assert json.loads(row["payload_json"])["firstName"] == "A\ufffdB"


async def test_the_same_long_id_is_still_one_event(settings: Settings) -> None:
    payload = texting_event(messageId="z" * 3000)
    body = json.dumps(payload).encode()
    async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        first = await client.post("/api/webhooks/texting", content=body, headers=texting(body))
        again = await client.post("/api/webhooks/texting", content=body, headers=texting(body))
    assert first.json()["status"] == "accepted" and again.json()["status"] == "duplicate"


async def test_a_large_ghl_body_is_one_message_on_the_wire(settings: Settings) -> None:
    body = ghl_contact(600_000)  # the payload twice (parsed + base64) was 1.4 MB > NATS's 1 MiB
    async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        answer = await client.post(
            "/api/webhooks/ghl", content=body, params={"token": WF_TOKEN}, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "accepted"
    [msg] = await stream_messages(settings.nats_url[0], "webhooks.ghl.>")
    assert len(msg.data) < len(body) * 1.4  # base64 once, not the payload twice
    event = WebhookEvent.from_bytes(msg.data)
    assert event.payload == json.loads(body) and event.payload_raw == body


async def test_a_body_whose_message_cannot_fit_is_413_with_the_limit(base_env: dict[str, str]) -> None:
    settings = Settings(**{k.lower(): v for k, v in base_env.items()}, webhook_max_body_bytes=4 * 1_048_576)
    body = ghl_contact(1_700_000)  # under the body cap, but base64 takes it over 2 MiB
    async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        answer = await client.post(
            "/api/webhooks/ghl", content=body, params={"token": WF_TOKEN}, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 413, answer.text
    assert str(NATS_MAX_PAYLOAD) in answer.json()["error"]
    assert await stream_messages(settings.nats_url[0], "webhooks.>") == []


@pytest.mark.slow
async def test_large_bodies_accepted_while_nats_is_down_drain_with_the_small_ones(
    tmp_path: Path, clean_db: str
) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    env = {**TEST_SECRETS, "NATS_URL": server.url, "DATABASE_URL": clean_db, "DFM_PUBLISH_TIMEOUT": "0.5"}
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    accepted: list[str] = []
    try:
        async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def ghl(size: int) -> None:
                answer = await client.post(
                    "/api/webhooks/ghl",
                    content=ghl_contact(size),
                    params={"token": WF_TOKEN},
                    headers={"content-type": "application/json"},
                )
                assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
                accepted.append(answer.json()["id"])

            async def small() -> None:
                body = json.dumps(texting_event()).encode()
                answer = await client.post("/api/webhooks/texting", content=body, headers=texting(body))
                assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
                accepted.append(answer.json()["id"])

            await ghl(500_000)  # NATS up: straight to the stream
            server.kill()
            await ghl(450_000)  # NATS down: the outbox takes them, the big one first
            await ghl(1_000_000)
            for _ in range(5):
                await small()
            assert await count_rows(clean_db, "ingress_outbox", "published_at IS NULL") == 7
            server.start()  # same port, same store

            async def drained() -> bool:
                return await count_rows(clean_db, "ingress_outbox", "published_at IS NULL") == 0

            await eventually(drained, timeout=60)
            assert await count_rows(clean_db, "ingress_outbox", "failed_at IS NOT NULL") == 0
        on_stream = {
            str(WebhookEvent.from_bytes(m.data).event_id) for m in await stream_messages(server.url, "webhooks.>")
        }
    finally:
        server.stop()
    assert set(accepted) <= on_stream and len(accepted) == 8


async def test_an_outbox_row_the_stream_refuses_is_set_aside_and_the_rest_drain(
    settings: Settings, clean_db: str
) -> None:
    """A row written before a smaller max_payload (or by an older ingress) must not block the
    rows behind it: it is marked failed with its reason, shown by the admin API and alerted."""
    import nats

    from services.infra.db.session import create_engine
    from tests.support.jobs_rig import execute

    big = json.dumps({"x": "y" * (NATS_MAX_PAYLOAD + 10)}).encode()
    await execute(
        clean_db,
        "INSERT INTO ingress_outbox (subject, dedupe_key, headers, body, created_at) "
        "VALUES ('webhooks.texting.message.message_received', 'too-big', '{}', $1, "
        "now() - interval '1 minute')",
        big,
    )
    events = []
    for _ in range(3):
        event = texting_event()
        body = WebhookEvent(
            source="texting",
            event_name="message.received",
            event_type="message_received",
            canonical_type="message.inbound",
            entity_type="message",
            entity_id=event["messageId"],
            dedupe_key=f"texting:{event['messageId']}",
            auth={"method": "hmac", "verified": True},
            payload=event,
        )
        events.append(body)
        await execute(
            clean_db,
            "INSERT INTO ingress_outbox (subject, dedupe_key, headers, body) VALUES ($1, $2, $3::jsonb, $4)",
            body.subject,
            body.dedupe_key,
            json.dumps(body.nats_headers()),
            body.to_bytes(),
        )
    engine = create_engine(settings)
    nc = await nats.connect(settings.nats_url)
    try:
        from contracts.streams import STREAMS
        from services.infra.broker import ensure_stream

        js = nc.jetstream()
        for spec in STREAMS:
            await ensure_stream(js, spec, settings)
        moved = await drain_outbox(engine, js, limit=10, publish_timeout=2)
        assert moved == 3
        assert await drain_outbox(engine, js, limit=10, publish_timeout=2) == 0  # nothing left to try
        [row] = await fetch(clean_db, "SELECT * FROM ingress_outbox WHERE failed_at IS NOT NULL")
        assert row["dedupe_key"] == "too-big" and row["published_at"] is None
        assert "MaxPayload" in row["last_error"]
        async with engine.connect() as conn:
            findings = {f.key: f for f in await check_latency_and_dead(conn)}
        assert findings["outbox_failed"].level == "critical" and findings["outbox_failed"].value == 1
    finally:
        await nc.close()
        await engine.dispose()
    on_stream = {WebhookEvent.from_bytes(m.data).event_id for m in await stream_messages(settings.nats_url[0])}
    assert on_stream == {e.event_id for e in events}
    async with running_ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        listed = (await client.get("/api/admin/outbox/failed", headers=ADMIN)).json()
        refused = await client.get("/api/admin/outbox/failed")
    assert refused.status_code == 401
    assert listed["count"] == 1 and listed["rows"][0]["dedupeKey"] == "too-big"
    assert listed["rows"][0]["sizeBytes"] == len(big) and "MaxPayload" in listed["rows"][0]["error"]


def test_every_shipped_nats_config_takes_the_same_max_payload() -> None:
    configs = sorted((Path(__file__).parents[2] / "deploy" / "nats").glob("*.conf"))
    assert configs
    for conf in configs:
        found = re.findall(r"^max_payload:\s*(\d+)\s*$", conf.read_text(), re.M)
        assert found == [str(NATS_MAX_PAYLOAD)], conf.name
    assert Settings.model_fields["dfm_nats_max_payload"].default == NATS_MAX_PAYLOAD


async def test_nats_announces_the_configured_max_payload(settings: Settings) -> None:
    import nats

    nc = await nats.connect(settings.nats_url)
    try:
        assert nc.max_payload == NATS_MAX_PAYLOAD
    finally:
        await nc.close()


def test_depth_limit_is_below_what_the_envelope_parser_takes() -> None:
    limit = Settings.model_fields["webhook_max_json_depth"].metadata
    assert any(getattr(m, "le", 1000) <= 190 for m in limit)
    # an envelope around the deepest payload the setting admits still parses (jiter stops at 200)
    payload = parse_body(nested(190), max_depth=190)
    event = WebhookEvent(
        source="texting",
        event_name="x",
        event_type="x",
        canonical_type="x",
        entity_type="message",
        entity_id="x",
        dedupe_key="x",
        auth={"method": "hmac", "verified": True},
        payload=payload,
    )
    assert WebhookEvent.from_bytes(event.to_bytes()).payload == payload
