"""Broadcast analytics from Verity's database into the GHL custom object (spec/outbound.md
§1.12; acceptance scenario T18). Verity's database is a second PostgreSQL database created
for the test from tests/fixtures/verity_db."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from services.ghl_sync.broadcast_figures import analytics
from services.infra.db.session import sync_url
from tests.conftest import TEST_SECRETS
from tests.support.broadcasts import VERITY_DB, verity_db  # noqa: F401
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline

EXPECTED = {
    "broadcast_id": "bcst-0001",
    "broadcast_name": "Webinar reminder",
    "channel": "SMS",
    "sent_at": "2026-11-01T17:00:00+00:00",
    "recipients": 5,
    "sent": 4,
    "delivered": 3,
    "pending": 1,
    "failed": 1,
    "responses": 2,
    "appointments_set": 1,
    "delivery_rate": 0.75,
    "response_rate": 0.6667,
    "failure_rate": 0.25,
    "conversion_rate": 0.5,
}


async def test_analytics_definitions_on_the_seeded_broadcast(verity_db: str) -> None:
    conn = await asyncpg.connect(sync_url(verity_db))
    try:
        assert await analytics(conn, "bcst-0001") == EXPECTED  # the 8-day-late reply does not count
        assert await analytics(conn, "nope") is None
        await conn.execute("UPDATE chat_message SET broadcast_id = NULL")  # no message references it
        fallback = await analytics(conn, "bcst-0001")
        assert fallback is not None and fallback["responses"] == 2  # matched through the owner's chat
    finally:
        await conn.close()


async def send_broadcast(p: Pipeline, timestamp: str) -> dict[str, Any]:
    body = {"broadcastId": "bcst-0001", "eventType": "analytics_updated", "timestamp": timestamp}
    answer = await p.ingress.post(
        "/api/webhooks/broadcast",
        json=body,
        headers={"X-DF-Broadcast-Secret": TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0]},
    )
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
    return answer.json()


async def broadcast_done(db: str, event_id: str) -> dict[str, Any] | None:
    found = await fetch(db, "SELECT * FROM broadcast_webhook_events WHERE id = $1::uuid", event_id)
    return found[0] if found and found[0]["status"] == "done" else None


async def test_t18_two_events_of_one_broadcast_give_one_record_then_a_put(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, verity_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, VERITY_DATABASE_URL=verity_db)
    async with running_pipeline(settings) as p:
        first = await send_broadcast(p, "2026-11-02T10:00:00Z")
        await eventually(lambda: broadcast_done(clean_db, first["id"]))
        second = await send_broadcast(p, "2026-11-02T11:00:00Z")
        await eventually(lambda: broadcast_done(clean_db, second["id"]))
        [record] = (await p.sandbox.get("/_sandbox/ghl/objects/custom_objects.broadcasts")).json()
        assert record["properties"] == EXPECTED
        writes = [(c["method"], c["path"]) for c in await p.calls("ghl") if c["path"].startswith("/objects/")]
        assert writes == [
            ("POST", "/objects/custom_objects.broadcasts/records/search"),
            ("POST", "/objects/custom_objects.broadcasts/records"),
            ("PUT", f"/objects/custom_objects.broadcasts/records/{record['id']}"),
        ]
        [mapping] = await fetch(clean_db, "SELECT external_id, ghl_record_id FROM ghl_object_record_mappings")
        assert mapping == {"external_id": "bcst-0001", "ghl_record_id": record["id"]}
        logs = await fetch(clean_db, "SELECT target_id FROM sync_log WHERE rule = 'B' AND status = 'success'")
        assert {r["target_id"] for r in logs} == {record["id"]}  # the GHL record id, not the broadcast id


async def test_a_record_made_elsewhere_is_found_and_updated_not_duplicated(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, verity_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path, VERITY_DATABASE_URL=verity_db)
    async with running_pipeline(settings) as p:
        made = await p.sandbox.post(
            "/ghl/objects/custom_objects.broadcasts/records",
            headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
            json={"locationId": settings.ghl_location_id, "properties": {"broadcast_id": "bcst-0001"}},
        )
        assert made.status_code == 201
        answer = await send_broadcast(p, "2026-11-02T12:00:00Z")
        await eventually(lambda: all_in_broadcast(clean_db, answer["id"]))
        [record] = (await p.sandbox.get("/_sandbox/ghl/objects/custom_objects.broadcasts")).json()
        assert record["id"] == made.json()["record"]["id"] and record["properties"]["recipients"] == 5


async def all_in_broadcast(db: str, event_id: str) -> bool:
    return await broadcast_done(db, event_id) is not None


async def test_an_appointment_reaches_the_verity_lead_and_recomputes_the_broadcast(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, verity_db: str
) -> None:
    """AP-1…AP-3: the appointment id lands on the Verity contact's latest lead and the
    broadcast that reached the contact is recomputed (now with 2 appointments)."""
    import json as _json

    from services.tooling.sender import sign

    settings = pipeline_settings(base_env, tmp_path, VERITY_DATABASE_URL=verity_db)
    async with running_pipeline(settings) as p:
        created = await p.sandbox.post(
            "/ghl/contacts/",
            headers={"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"},
            json={"locationId": settings.ghl_location_id, "firstName": "Vee", "phone": "+15555550402"},
        )
        contact_id = created.json()["contact"]["id"]
        body = load_appointment(contact_id)
        raw = _json.dumps(body).encode()
        request = sign(settings, "ghl", raw)
        answer = await p.ingress.post(request.path, content=raw, headers=request.headers)
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text

        async def recomputed() -> list[dict[str, Any]]:
            return await fetch(
                clean_db, "SELECT status, dedupe_key FROM broadcast_webhook_events WHERE status = 'done'"
            )

        [event] = await eventually(recomputed)
        assert event["dedupe_key"] == f"broadcast:bcst-0001:analytics_updated:appt:{body['appointment']['id']}"
        conn = await asyncpg.connect(sync_url(verity_db))
        try:
            leads = await conn.fetch("SELECT ghl_appointment_id FROM leads WHERE contact_id = 'vc2'")
        finally:
            await conn.close()
        assert [r["ghl_appointment_id"] for r in leads] == [body["appointment"]["id"]]
        [record] = (await p.sandbox.get("/_sandbox/ghl/objects/custom_objects.broadcasts")).json()
        assert record["properties"]["appointments_set"] == 2


def load_appointment(contact_id: str) -> dict[str, Any]:
    import uuid as _uuid
    from datetime import UTC, datetime

    from tests.conftest import load_fixture

    body = load_fixture("ghl/AppointmentCreate.json")
    body["appointment"].update(id=f"appt-{_uuid.uuid4().hex[:8]}", contactId=contact_id)
    body["locationId"] = "ghlLocationDemo00001"
    body["webhookId"] = str(_uuid.uuid4())
    body["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return body
