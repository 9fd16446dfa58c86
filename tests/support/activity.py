"""Helpers shared by several test modules."""

from __future__ import annotations

from typing import Any

from tests.conftest import TEST_SECRETS
from tests.support.ingress_rig import dumps
from tests.support.sync_rig import Pipeline

GHL = {"Authorization": "Bearer sandbox-ghl-key", "Version": "2021-07-28"}


async def notes(p: Pipeline, contact_id: str) -> list[str]:
    answer = await p.sandbox.get(f"/ghl/contacts/{contact_id}/notes", headers=GHL)
    return [n["body"] for n in answer.json()["notes"]]


async def send_texting(p: Pipeline, payload: dict[str, Any]) -> dict[str, Any]:
    body = dumps(payload)
    headers = {
        "X-Texting-Secret": TEST_SECRETS["VERITY_WEBHOOK_SECRET"].split(",")[0],
        "content-type": "application/json",
    }
    answer = await p.ingress.post("/api/webhooks/texting", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


__all__ = ["notes", "send_texting"]
