"""Helpers shared by several test modules."""

from __future__ import annotations

from typing import Any

from services.clients.ghl_oauth import sign_state
from tests.support.jobs_rig import fetch
from tests.support.sync_rig import Pipeline


async def install(p: Pipeline) -> None:
    answer = await p.ingress.get("/leadconnector/oauth", params={"code": "code-test", "state": sign_state(p.settings)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True


async def conversations(p: Pipeline) -> dict[str, Any]:
    return (await p.sandbox.get("/_sandbox/ghl/conversations")).json()


async def texting_status(db: str, event_id: str, *statuses: str) -> dict[str, Any] | None:
    found = await fetch(db, "SELECT * FROM texting_webhook_events WHERE id = $1::uuid", event_id)
    return found[0] if found and found[0]["status"] in statuses else None


__all__ = ["conversations", "install", "texting_status"]
