"""Helpers shared by several test modules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.infra.db.session import sync_url
from services.infra.signing import basic_auth
from tests.conftest import TEST_SECRETS, load_fixture
from tests.support.sync_rig import Pipeline

ALOWARE_AUTH = {"authorization": basic_auth("aloware", TEST_SECRETS["ALOWARE_WEBHOOK_BASIC_PASS"])}


def aloware_contact(
    n: int, *, first: str = "Ada", updated_at: datetime | None = None, event: str = "Contact Created", **fields: Any
) -> dict[str, Any]:
    body = load_fixture("aloware/contact-created.json")["body"]
    stamp = (updated_at or datetime.now(UTC)).isoformat()
    return {
        "event": event,
        "body": {
            **body,
            "id": str(8_000_000 + n),
            "phone_number": f"+1555555{n:04d}",
            "email": f"contact{n}@example.com",
            "first_name": first,
            "last_name": f"Person{n}",
            "external_ids": {},
            "disposition_status": "",
            "updated_at": stamp,
            **fields,
        },
    }


async def send_aloware(p: Pipeline, payload: dict[str, Any]) -> dict[str, Any]:
    response = await p.ingress.post("/api/webhooks/aloware", content=json.dumps(payload), headers=ALOWARE_AUTH)
    assert response.status_code == 200, response.text
    return response.json()


async def event_row(database_url: str, event_id: str) -> dict[str, Any] | None:
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        row = await conn.fetchrow("SELECT * FROM webhook_events WHERE id = $1::uuid", event_id)
    finally:
        await conn.close()
    return dict(row) if row else None


async def done(database_url: str, event_id: str) -> dict[str, Any] | None:
    row = await event_row(database_url, event_id)
    return row if row and row["status"] in ("done", "dead") else None


async def webhooks_settled(p: Pipeline, database_url: str) -> bool:
    """Every webhook the sandbox vendors sent (our writes' echoes) has reached the ingress and
    its event has finished; their POSTs run in the background, so a write's echo may still be
    on its way when the write's own event is done."""
    report = await p.webhooks()
    if report["in_flight"]:
        return False
    for sent in report["delivered"]:
        assert sent["status"] == 200 and sent["event_id"], sent  # the ingress took every echo
    ids = list({sent["event_id"] for sent in report["delivered"]})
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        finished = await conn.fetchval(
            "SELECT count(*) FROM webhook_events WHERE id = ANY($1::uuid[]) AND status IN ('done', 'dead')", ids
        )
    finally:
        await conn.close()
    return bool(finished == len(ids))


async def settled(p: Pipeline, database_url: str, expected: int = 1) -> bool:
    """At least ``expected`` events recorded, every one finished, and every echo of our writes
    the sandbox sent recorded and finished too (a pending echo puts the contact's snapshot in
    doubt, and the next update reads GHL first)."""
    conn = await asyncpg.connect(sync_url(database_url))
    try:
        statuses = [r["status"] for r in await conn.fetch("SELECT status FROM webhook_events")]
    finally:
        await conn.close()
    return (
        len(statuses) >= expected
        and all(s in ("done", "dead") for s in statuses)
        and await webhooks_settled(p, database_url)
    )


async def no_invalid_requests(p: Pipeline) -> None:
    bad = [c for c in await p.calls() if c["status"] == 422]
    assert bad == [], bad[:3]


__all__ = [
    "ALOWARE_AUTH",
    "aloware_contact",
    "done",
    "no_invalid_requests",
    "send_aloware",
    "settled",
    "webhooks_settled",
]
