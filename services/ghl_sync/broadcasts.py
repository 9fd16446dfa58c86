"""Broadcast analytics into the GHL custom object ``custom_objects.broadcasts`` (spec/outbound.md
§1.12, rules B-1…B-5).

The figures are recomputed from Verity's database (read only, one grouped statement per
metric family) whenever an analytics event arrives. Events of one broadcast are serialised
by a lock and coalesced: an event received before the last recomputation finished is already
reflected in it and is skipped. The record is found through ``ghl_object_record_mappings``,
else GHL's record search, and written with PUT when it exists (a duplicate answer on create
names the record to update instead).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.envelope import WebhookEvent
from services.domain import store
from services.infra.db.models import GhlObjectRecordMappingRow
from services.infra.delivery import Outcome
from services.infra.errors import Permanent
from services.infra.verity_db import VerityDatabase

if TYPE_CHECKING:
    from services.ghl_sync.service import GhlSync

OBJECT_KEY = "custom_objects.broadcasts"
COUNTS_SQL = """
SELECT b.id, b.type, b.subject, b.executed_at, b.user_id,
       count(r.id) AS recipients,
       count(r.id) FILTER (WHERE r.status = 'sent') AS sms_delivered,
       count(r.id) FILTER (WHERE r.status IN ('delivered', 'opened', 'clicked')) AS email_delivered,
       count(r.id) FILTER (WHERE r.status = 'failed') AS failed,
       count(r.id) FILTER (WHERE r.status = 'bounced') AS bounced,
       count(r.id) FILTER (WHERE r.status = 'pending') AS pending,
       min(r.sent_at) AS first_sent
FROM broadcast b LEFT JOIN broadcast_recipient r ON r.broadcast_id = b.id
WHERE b.id = $1 GROUP BY b.id"""
RESPONSES_SQL = """
WITH first_sent AS (
    SELECT participant_id, min(created_at) AS at FROM chat_message
    WHERE broadcast_id = $1 AND status = 'sent' GROUP BY participant_id)
SELECT count(*) FROM first_sent f WHERE EXISTS (
    SELECT 1 FROM chat_message m WHERE m.participant_id = f.participant_id AND m.status = 'received'
      AND m.created_at > f.at AND m.created_at <= f.at + interval '7 days')"""
RESPONSES_FALLBACK_SQL = """
SELECT count(DISTINCT r.id) FROM broadcast b
JOIN broadcast_recipient r ON r.broadcast_id = b.id
JOIN contacts c ON c.id = r.contact_id
JOIN chat ch ON ch.owner_id = b.user_id
JOIN chat_participant p ON p.chat_id = ch.id AND p.phone_number = c.phone_e164
WHERE b.id = $1 AND EXISTS (
    SELECT 1 FROM chat_message m WHERE m.participant_id = p.id AND m.status = 'received'
      AND m.created_at > coalesce(r.sent_at, b.executed_at)
      AND m.created_at <= coalesce(r.sent_at, b.executed_at) + interval '7 days')"""
REFERENCED_SQL = "SELECT count(*) FROM chat_message WHERE broadcast_id = $1"
APPOINTMENTS_SQL = """
SELECT count(*) FROM leads l
WHERE l.ghl_appointment_id IS NOT NULL
  AND l.contact_id IN (SELECT contact_id FROM broadcast_recipient WHERE broadcast_id = $1 AND status = ANY($2))
  AND coalesce(l.last_activity_at, l.created_at) >= $3"""


def _rate(part: int, whole: int) -> float:
    """A percentage with 2 decimals, as a decimal fraction (B-4: 66.67 % → 0.6667)."""
    return round(round(part / whole * 100, 2) / 100, 4) if whole else 0.0


async def analytics(conn: asyncpg.Connection, broadcast_id: str) -> dict[str, Any] | None:
    """B-2: the record's properties (B-4), or None when Verity has no such broadcast."""
    row = await conn.fetchrow(COUNTS_SQL, broadcast_id)
    if row is None:
        return None
    sms = str(row["type"]).upper() == "SMS"
    delivered_states = ["sent"] if sms else ["delivered", "opened", "clicked"]
    delivered = row["sms_delivered"] if sms else row["email_delivered"]
    failed, bounced, pending = row["failed"], row["bounced"], row["pending"]
    sent = delivered + failed
    responses = 0
    if sms:
        referenced = await conn.fetchval(REFERENCED_SQL, broadcast_id)
        responses = await conn.fetchval(RESPONSES_SQL if referenced else RESPONSES_FALLBACK_SQL, broadcast_id)
    since = row["first_sent"] or row["executed_at"]
    appointments = await conn.fetchval(APPOINTMENTS_SQL, broadcast_id, delivered_states, since) if since else 0
    kind = "SMS" if sms else "EMAIL"
    return {
        "broadcast_id": broadcast_id,
        "broadcast_name": row["subject"] or f"{kind} Broadcast {broadcast_id[:8]}",
        "channel": "SMS" if sms else "Email",
        "sent_at": since.isoformat() if since else "",
        "recipients": row["recipients"], "sent": sent, "delivered": delivered, "pending": pending,
        "failed": failed, "responses": responses, "appointments_set": appointments,
        "delivery_rate": _rate(delivered, sent), "response_rate": _rate(responses, delivered),
        "failure_rate": _rate(failed + bounced, sent), "conversion_rate": _rate(appointments, responses),
    }


class BroadcastRules:
    """B-1…B-5 for one ghl-sync process."""

    def __init__(self, sync: GhlSync) -> None:
        self.sync = sync
        self.settings = sync.settings
        self.engine = sync.engine
        self.verity_db = VerityDatabase(self.settings)

    async def aclose(self) -> None:
        await self.verity_db.aclose()

    async def analytics_updated(self, event: WebhookEvent, attempt: int) -> Outcome:
        broadcast_id = event.entity_id
        common = {"direction": "texting_to_ghl", "entity_type": "broadcast", "source_id": broadcast_id,
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        if not self.settings.verity_database_url:
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="skipped", rule="B", message="verity_database_not_configured",
                                     **common)
            return Outcome("skipped", "verity_database_not_configured")
        async with store.contact_lock(self.engine, f"broadcast:{broadcast_id}") as conn:
            mapping = (await conn.execute(select(GhlObjectRecordMappingRow).where(
                GhlObjectRecordMappingRow.object_key == OBJECT_KEY,
                GhlObjectRecordMappingRow.external_id == broadcast_id))).first()
            if mapping is not None and mapping.updated_at > event.received_at:
                await store.log_sync(conn, status="skipped", rule="B", target_id=mapping.ghl_record_id,
                                     message="coalesced", **common)
                return Outcome("skipped", "coalesced")  # a later recomputation already includes it
            pool = await self.verity_db.pool()
            async with pool.acquire() as verity:
                properties = await analytics(verity, broadcast_id)
            if properties is None:
                raise Permanent(f"broadcast {broadcast_id} not found in Verity")
            record_id = await self._upsert(mapping.ghl_record_id if mapping else None, broadcast_id, properties)
            values = {"ghl_record_id": record_id, "updated_at": datetime.now(UTC)}
            await conn.execute(pg_insert(GhlObjectRecordMappingRow).values(
                object_key=OBJECT_KEY, external_id=broadcast_id, **values)
                .on_conflict_do_update(index_elements=["object_key", "external_id"], set_=values))
            await store.log_sync(conn, status="success", rule="B", target_id=record_id,
                                 details={k: properties[k] for k in ("recipients", "delivered", "responses")},
                                 **common)
        return Outcome("applied")

    async def _upsert(self, known: str | None, broadcast_id: str, properties: dict[str, Any]) -> str:
        ghl = self.sync.ghl
        if known and await ghl.update_record(OBJECT_KEY, known, properties):
            return known
        found = next((r["id"] for r in await ghl.search_records(OBJECT_KEY, broadcast_id)
                      if (r.get("properties") or {}).get("broadcast_id") == broadcast_id), None)
        if found and await ghl.update_record(OBJECT_KEY, str(found), properties):
            return str(found)
        record_id, created = await ghl.create_record(OBJECT_KEY, properties)
        if not created:  # duplicate: GHL named the record to update
            await ghl.update_record(OBJECT_KEY, record_id, properties)
        return record_id
