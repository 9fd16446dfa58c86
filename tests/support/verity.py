"""Helpers shared by several test modules."""

from __future__ import annotations

import json
from typing import Any

from services.tooling.sender import refresh, sign
from tests.support.sync_rig import Pipeline


async def send_provider(p: Pipeline, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST a signed provider delivery (fresh message id); (answer, the payload sent)."""
    fresh = refresh(payload, "ghl_provider")
    body = json.dumps(fresh).encode()
    request = sign(p.settings, "ghl_provider", body)
    answer = await p.ingress.post(request.path, content=body, headers=request.headers, params=request.params)
    assert answer.status_code == 200, answer.text
    return answer.json(), fresh


async def verity_sends(p: Pipeline) -> list[dict[str, Any]]:
    return [c for c in await p.calls("verity") if c["path"].endswith("/send-message") and c["status"] == 200]


__all__ = ["send_provider", "verity_sends"]
