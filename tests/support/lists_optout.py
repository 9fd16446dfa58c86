"""Helpers shared by several test modules."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.infra.signing import ghl_ed25519_signature, load_private_key
from tests.support.sync_rig import Pipeline


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def send_ghl(p: Pipeline, kind: str, contact: dict[str, Any]) -> dict[str, Any]:
    """A GHL webhook for ``contact`` as it is, signed like GHL's (the sandbox's own are off)."""
    body = json.dumps(
        {
            "type": kind,
            "locationId": contact.get("locationId"),
            **contact,
            "timestamp": _now(),
            "webhookId": str(uuid.uuid4()),
        }
    ).encode()
    key = load_private_key(Path(str(p.settings.dfm_ghl_signing_key_file)))
    answer = await p.ingress.post(
        "/api/webhooks/ghl",
        content=body,
        headers={"content-type": "application/json", "x-ghl-signature": ghl_ed25519_signature(key, body)},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


__all__ = ["send_ghl"]
