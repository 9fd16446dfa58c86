"""B-2/B-4 (spec/outbound.md §1.12): a broadcast's figures from Verity's database (read only,
one grouped statement per metric family), as the properties of its GHL custom-object record.
The rule is ``rules/broadcasts.py``."""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.infra.verity_db import VerityDatabase

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


async def analytics(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], broadcast_id: str
) -> dict[str, Any] | None:
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
        "recipients": row["recipients"],
        "sent": sent,
        "delivered": delivered,
        "pending": pending,
        "failed": failed,
        "responses": responses,
        "appointments_set": appointments,
        "delivery_rate": _rate(delivered, sent),
        "response_rate": _rate(responses, delivered),
        "failure_rate": _rate(failed + bounced, sent),
        "conversion_rate": _rate(appointments, responses),
    }


class BroadcastFigures:
    """B-2 for one ghl-sync process: the figures of a broadcast from Verity's database
    (one small pool, opened on first use)."""

    def __init__(self, verity_db: VerityDatabase) -> None:
        self.verity_db = verity_db

    async def read(self, broadcast_id: str) -> dict[str, Any] | None:
        pool = await self.verity_db.pool()
        async with pool.acquire() as verity:
            return await analytics(verity, broadcast_id)

    async def aclose(self) -> None:
        await self.verity_db.aclose()
