"""Issue #16 items 7 and 8, end to end through the real services and the sandbox vendors:
MMS attachments (spec/outbound.md M-1.7, M-2), the ``source`` and mapping direction of GHL
contacts created from texts and Aloware DNC events (M-1.5, O-2, D-1, §1.17), appointments
whose contact is found by phone or e-mail (AP-1), and GHL's daily quota held by every
replica together (§2.1)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from services.infra.db.session import sync_url
from services.tooling.sender import sign
from tests.conftest import load_fixture
from tests.support.activity import send_texting
from tests.support.broadcasts import verity_db  # noqa: F401  (fixture: Verity's database)
from tests.support.contacts import aloware_contact, send_aloware
from tests.support.jobs import all_in
from tests.support.jobs_rig import fetch
from tests.support.messages import conversations, install, texting_status
from tests.support.sync_rig import Pipeline, eventually, pipeline_settings, running_pipeline
from tests.support.verity import send_provider, verity_sends

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


async def posted_messages(p: Pipeline) -> list[dict[str, Any]]:
    """Request bodies of every accepted G12 call, as the sandbox GHL recorded them."""
    return [
        c["body"] for c in await p.calls("ghl") if c["path"] == "/conversations/messages/inbound" and c["status"] == 200
    ]


async def contact_creates(p: Pipeline) -> list[dict[str, Any]]:
    return [
        c["body"]
        for c in await p.calls("ghl")
        if c["method"] == "POST" and c["path"] == "/contacts/" and c["status"] == 201
    ]


async def event(db: str, event_id: str) -> dict[str, Any]:
    [row] = await fetch(db, "SELECT * FROM webhook_events WHERE id = $1::uuid", event_id)
    return row


def texting(**fields: Any) -> dict[str, Any]:
    body = {**load_fixture("texting/message.received.json"), "messageId": f"mms-{uuid.uuid4().hex[:10]}"}
    body.update(fields)
    return body


# --- item 7: MMS -------------------------------------------------------------------------
async def test_an_inbound_mms_reaches_the_ghl_conversation_with_its_attachments(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    photo, pdf = "https://media.example.com/mms/photo-1.jpg", "https://media.example.com/mms/estimate.pdf"
    async with running_pipeline(settings) as p:
        await install(p)
        # flat shape with mediaUrls, and an attachment-only MMS in the nested shape
        with_text = await send_texting(p, texting(body="Photo of the damage", mediaUrls=[photo, pdf]))
        nested = {
            "type": "message.received",
            "message": {
                "id": f"mms-{uuid.uuid4().hex[:10]}",
                "conversationId": "verityChatDemo-0009",
                "from": "+15555550612",
                "to": "+15555550100",
                "body": "",
                "direction": "inbound",
                "timestamp": "2025-03-10T17:00:05Z",
                "attachments": [{"url": photo, "contentType": "image/jpeg"}],
            },
        }
        only_media = await send_texting(p, nested)
        for answer in (with_text, only_media):
            row = await eventually(lambda a=answer: texting_status(clean_db, a["id"], "done", "dead"))
            assert row["status"] == "done", row["error_message"]
        bodies = {b["message"]: b for b in await posted_messages(p)}
        assert bodies["Photo of the damage"]["attachments"] == [photo, pdf]
        assert bodies[""]["attachments"] == [photo]
        assert {b["direction"] for b in bodies.values()} == {"inbound"}
        stored = {m["body"]: m for m in (await conversations(p))["messages"]}
        assert stored["Photo of the damage"]["attachments"] == [photo, pdf]


async def test_an_agent_sms_with_attachments_sends_the_text_and_records_attachments_dropped(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """Verity's send-message API takes ``to``, ``body``, ``from``, ``conversationId`` and
    ``correlationId`` only (spec/outbound.md §2.4 V1): the text goes out, the drop is
    recorded on the event and in sync_log."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        sms = {
            **load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json"),
            "attachments": ["https://media.example.com/agent/brochure.pdf"],
        }
        answer, sent_payload = await send_provider(p, sms)
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done", "dead"))
        row = await event(clean_db, answer["id"])
        assert (row["status"], row["outcome"], row["outcome_reason"]) == ("done", "applied", "attachments_dropped")
        [sent] = await verity_sends(p)
        assert sent["body"] == {
            "to": "+15555550101",
            "body": sent_payload["message"],
            "correlationId": sent_payload["messageId"],
        }
        [log] = await fetch(clean_db, "SELECT status, error_message, details FROM sync_log WHERE rule = 'M-2'")
        assert (log["status"], log["error_message"]) == ("success", "attachments_dropped")
        assert json.loads(log["details"]) == {"attachments_dropped": 1}


async def test_an_attachment_only_agent_message_ends_done_not_dead(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        sms = {
            **load_fixture("ghl-provider-delivery/ProviderOutboundMessage-sms.json"),
            "message": "",
            "attachments": ["https://media.example.com/agent/photo.jpg"],
        }
        answer, sent_payload = await send_provider(p, sms)
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done", "dead"))
        row = await event(clean_db, answer["id"])
        assert (row["status"], row["outcome"], row["outcome_reason"]) == ("done", "skipped", "attachments_dropped")
        assert await verity_sends(p) == []  # nothing Verity could send
        # GHL is told, so the agent's message does not stay pending for ever
        [message] = (await conversations(p))["messages"]
        assert message["id"] == sent_payload["messageId"] and message["status"] == "failed"
        assert message["error"]["code"] == "attachments_not_supported"
        [log] = await fetch(clean_db, "SELECT status, error_message FROM sync_log WHERE rule = 'M-2'")
        assert (log["status"], log["error_message"]) == ("skipped", "attachments_dropped")


# --- item 8: source and mapping direction ------------------------------------------------
async def test_a_ghl_contact_created_from_a_text_is_a_texting_contact_mapped_both_ways(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """M-1.5 and O-2: ``POST /contacts/`` with the phone only and ``source:"texting"``;
    the mapping has no Aloware id and ``sync_direction='bidirectional'``."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        await install(p)
        text = await send_texting(p, texting(**{"from": "+15555550621"}))
        stop = await send_texting(p, {**load_fixture("texting/optout.stop.json"), "from": "+15555550622"})
        await eventually(lambda: texting_status(clean_db, text["id"], "done"))
        await eventually(lambda: texting_status(clean_db, stop["id"], "done"))
        creates = sorted(await contact_creates(p), key=lambda b: b["phone"])
        assert creates == [
            {"phone": "+15555550621", "source": "texting", "locationId": settings.ghl_location_id},
            {"phone": "+15555550622", "source": "texting", "locationId": settings.ghl_location_id},
        ]
        mappings = await fetch(
            clean_db,
            "SELECT phone_number, aloware_contact_id, sync_direction FROM contact_mappings ORDER BY phone_number",
        )
        assert mappings == [
            {"phone_number": "+15555550621", "aloware_contact_id": None, "sync_direction": "bidirectional"},
            {"phone_number": "+15555550622", "aloware_contact_id": None, "sync_direction": "bidirectional"},
        ]


async def test_a_ghl_contact_created_from_an_aloware_dnc_event_is_an_aloware_contact_mapped_both_ways(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """D-1 find-or-create through the CA rules (``source:"aloware"``, the Aloware fields),
    mapping upserted ``bidirectional`` with the Aloware id (§1.17)."""
    settings = pipeline_settings(base_env, tmp_path)
    async with running_pipeline(settings) as p:
        answer = await send_aloware(p, load_fixture("aloware/contact-dnc-updated.json"))
        await eventually(lambda: all_in(clean_db, [answer["id"]], "done"))
        [created] = await contact_creates(p)
        assert created["source"] == "aloware" and created["phone"] == "+15555550101"
        assert created["firstName"] == "Ada"
        [mapping] = await fetch(
            clean_db, "SELECT aloware_contact_id, phone_number, sync_direction FROM contact_mappings"
        )
        assert mapping == {
            "aloware_contact_id": "7000001",
            "phone_number": "+15555550101",
            "sync_direction": "bidirectional",
        }


# --- item 8: appointments without a mapping ----------------------------------------------
async def _leads(verity_url: str, contact_id: str) -> list[str | None]:
    conn = await asyncpg.connect(sync_url(verity_url))
    try:
        rows = await conn.fetch("SELECT ghl_appointment_id FROM leads WHERE contact_id = $1 ORDER BY id", contact_id)
    finally:
        await conn.close()
    return [r["ghl_appointment_id"] for r in rows]


async def _send_ghl(p: Pipeline, body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    request = sign(p.settings, "ghl", raw)
    answer = await p.ingress.post(request.path, content=raw, headers=request.headers)
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
    return answer.json()


async def test_an_appointment_with_no_mapping_finds_the_contact_by_phone_and_by_email(
    base_env: dict[str, str],
    tmp_path: Path,
    clean_db: str,
    verity_db: str,
) -> None:
    """AP-1: workflow appointments naming no contact id, for contacts we never mapped. GHL
    does not know two of the appointment ids, so its duplicate search by the payload's phone
    (then e-mail) finds the contact; for the third, GHL's appointment (G15) names it. The GHL
    contact's phone/e-mail then find the Verity contact (AP-2)."""
    settings = pipeline_settings(
        base_env, tmp_path, VERITY_DATABASE_URL=verity_db, SYNC_GHL_CONTACTS_TO_ALOWARE="false"
    )
    async with running_pipeline(settings) as p:
        by_phone = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL,
            json={"locationId": settings.ghl_location_id, "firstName": "Vee", "phone": "+15555550403"},
        )
        by_email = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL,
            json={"locationId": settings.ghl_location_id, "firstName": "Ay", "email": "a@example.com"},
        )
        by_appointment = await p.sandbox.post(
            "/ghl/contacts/",
            headers=GHL,
            json={"locationId": settings.ghl_location_id, "firstName": "Bee", "phone": "+15555550402"},
        )
        assert {by_phone.status_code, by_email.status_code, by_appointment.status_code} == {201}
        known = f"appt-{uuid.uuid4().hex[:8]}"  # G15: GHL names this appointment's contact
        await p.sandbox.post(
            "/_sandbox/ghl/appointments", json={"id": known, "contactId": by_appointment.json()["contact"]["id"]}
        )
        assert await fetch(clean_db, "SELECT 1 FROM contact_mappings") == []  # no mapping exists
        workflow = load_fixture("ghl/workflow-appointment-webhook.json")
        workflow.pop("contactId")
        phone_appt = {**workflow, "id": f"appt-{uuid.uuid4().hex[:8]}", "phone": "(555) 555-0403"}
        phone_appt.pop("email")
        email_appt = {**workflow, "id": f"appt-{uuid.uuid4().hex[:8]}", "email": "A@Example.com"}
        email_appt.pop("phone")
        known_appt = {**workflow, "id": known}
        known_appt.pop("phone")
        known_appt.pop("email")
        sent = [await _send_ghl(p, body) for body in (phone_appt, email_appt, known_appt)]
        await eventually(lambda: all_in(clean_db, [a["id"] for a in sent], "done"))
        assert await _leads(verity_db, "vc3") == [phone_appt["id"]]  # inserted: vc3 had no lead
        assert await _leads(verity_db, "vc1") == [email_appt["id"]]  # vc1's latest lead updated
        assert await _leads(verity_db, "vc2") == [known]
        found = [c["query"] for c in await p.calls("ghl") if c["path"] == "/contacts/search/duplicate"]
        assert {"locationId": settings.ghl_location_id, "number": "+15555550403"} in found
        assert {"locationId": settings.ghl_location_id, "email": "A@Example.com"} in found
        logs = await fetch(clean_db, "SELECT status, target_id FROM sync_log WHERE rule = 'AP'")
        assert sorted((r["status"], r["target_id"]) for r in logs) == [
            ("success", "vc1"),
            ("success", "vc2"),
            ("success", "vc3"),
        ]


# --- item 8: the daily quota -------------------------------------------------------------
async def _ghl_api_calls(p: Pipeline) -> list[dict[str, Any]]:
    """Budgeted GHL calls (the OAuth token endpoint is not an API call of the location)."""
    return [c for c in await p.calls("ghl") if c["path"] != "/oauth/token"]


async def test_the_daily_quota_stops_ghl_calls_across_replicas_and_the_events_wait(
    base_env: dict[str, str], tmp_path: Path, clean_db: str
) -> None:
    """GHL_RATE_LIMIT_PER_DAY is held by both replicas together: exactly that many calls
    reach GHL, then every event that needs GHL waits for the quota window (``error`` with a
    next attempt about a day later, not counted as an attempt: with one attempt allowed, a
    counted wait would be ``dead``), and the metrics show the quota spent."""
    quota = 7
    settings = pipeline_settings(base_env, tmp_path, GHL_RATE_LIMIT_PER_DAY=str(quota), RETRY_MAX_ATTEMPTS="1")
    key = f"ghl:{settings.ghl_location_id}"
    refused_before = REGISTRY.get_sample_value("dfm_rate_budget_quota_refusals_total", {"budget": key}) or 0
    async with running_pipeline(settings, replicas=2) as p:
        answers = [await send_aloware(p, aloware_contact(600 + n)) for n in range(8)]
        ids = [a["id"] for a in answers]

        async def settled() -> list[dict[str, Any]] | None:
            rows = await fetch(
                clean_db,
                "SELECT id::text, status, outcome, error_message, next_attempt_at "
                "FROM webhook_events WHERE id = ANY($1::uuid[])",
                ids,
            )
            return (
                rows if len(rows) == len(ids) and all(r["status"] in ("done", "error", "dead") for r in rows) else None
            )

        rows = await eventually(settled, timeout=60)
        assert len(await _ghl_api_calls(p)) == quota  # exactly the quota, shared by both replicas
        assert [r for r in rows if r["status"] == "dead"] == []
        waiting = [r for r in rows if r["status"] == "error"]
        assert waiting, rows
        for row in waiting:
            assert "daily quota" in row["error_message"], row
            assert row["next_attempt_at"] > datetime.now(UTC) + timedelta(hours=23)
        assert all(c["status"] != 429 for c in await p.calls("ghl"))
        refused = REGISTRY.get_sample_value("dfm_rate_budget_quota_refusals_total", {"budget": key}) or 0
        assert refused - refused_before >= len(waiting)
        assert REGISTRY.get_sample_value("dfm_rate_budget_quota_remaining", {"budget": key}) == 0
