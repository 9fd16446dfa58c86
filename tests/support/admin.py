"""Helpers shared by several test modules."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from tests.support.jobs_rig import execute

ADMIN = {"X-DF-ADMIN-SECRET": "admin-secret-1"}


BASE = datetime(2026, 11, 1, tzinfo=UTC)


async def insert_events(
    db: str, count: int, *, start: int = 0, status: str = "done", spread_s: int = 86_400, payload: dict | None = None
) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    body = json.dumps(
        payload
        or {"email": "ada@example.com", "nested": {"phone": "+15550001111"}, "list": [{"firstName": "Ada"}], "id": "c1"}
    )
    await execute(
        db,
        """
        INSERT INTO webhook_events (id, received_at, source, event_type, event_token, canonical_type,
            entity_type, entity_id, payload_json, dedupe_key, status)
        SELECT i::uuid, $2::timestamptz + (random() * $3) * interval '1 second', 'aloware', 'Contact Created',
               'contact_created', 'contact.created', 'contact', 'e' || n, $4::jsonb, 'k:' || i, $5
        FROM unnest($1::text[]) WITH ORDINALITY AS t(i, n)""",
        ids,
        BASE + timedelta(seconds=start),
        spread_s,
        body,
        status,
    )
    return ids


__all__ = ["ADMIN", "insert_events"]
