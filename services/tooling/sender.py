"""Build and post signed webhook requests (``dfm send``, benchmarks)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from services.infra.settings import Settings
from services.infra.signing import (
    WEBHOOK_PATHS,
    SignedRequest,
    basic_auth,
    ghl_ed25519_signature,
    hmac_hex,
    load_private_key,
)


def refresh(body: dict[str, Any], source: str) -> dict[str, Any]:
    """New ids and timestamps so a fixture is accepted as a new event."""
    out = dict(body)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if "webhookId" in out:
        out["webhookId"] = str(uuid.uuid4())
    if "timestamp" in out:
        out["timestamp"] = now
    if source in ("ghl_provider", "texting") and "messageId" in out:
        out["messageId"] = f"{out['messageId']}-{uuid.uuid4().hex[:8]}"
    return out


def sign(settings: Settings, source: str, body: bytes) -> SignedRequest:
    """Headers and query a real sender would add, from this process's settings."""
    if source not in WEBHOOK_PATHS:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(WEBHOOK_PATHS)}")
    headers = {"content-type": "application/json"}
    params: dict[str, str] = {}
    if source in ("ghl", "ghl_provider"):
        if settings.dfm_ghl_signing_key_file:
            key = load_private_key(Path(settings.dfm_ghl_signing_key_file))
            headers["x-ghl-signature"] = ghl_ed25519_signature(key, body)
        elif source == "ghl" and settings.ghl_workflow_webhook_token:
            params["token"] = settings.ghl_workflow_webhook_token[0].get_secret_value()
        else:
            raise ValueError("no GHL signing key (DFM_GHL_SIGNING_KEY_FILE) or workflow token")
    elif source == "aloware":
        if not (settings.aloware_webhook_basic_user and settings.aloware_webhook_basic_pass):
            raise ValueError("ALOWARE_WEBHOOK_BASIC_USER/PASS are not set")
        headers["authorization"] = basic_auth(
            settings.aloware_webhook_basic_user,
            settings.aloware_webhook_basic_pass[0].get_secret_value(),
        )
    else:
        if not settings.verity_webhook_secret:
            raise ValueError("VERITY_WEBHOOK_SECRET is not set")
        name = "x-texting-signature" if source == "texting" else "x-broadcast-signature"
        headers[name] = hmac_hex(settings.verity_webhook_secret[0].get_secret_value(), body)
    return SignedRequest(WEBHOOK_PATHS[source], headers, params)


def build_request(settings: Settings, raw: bytes, source: str, *, fresh: bool = False) -> tuple[bytes, SignedRequest]:
    """The body (refreshed when asked) and its signed request."""
    body = raw
    if fresh:
        parsed = json.loads(raw)
        if not isinstance(parsed, dict):
            raise ValueError("a fixture must be a JSON object")
        body = json.dumps(refresh(parsed, source)).encode()
    return body, sign(settings, source, body)


def post(base_url: str, request: SignedRequest, body: bytes) -> tuple[int, str]:
    """POST and return (status, response text)."""
    response = httpx.post(
        base_url.rstrip("/") + request.path,
        content=body,
        headers=request.headers,
        params=request.params,
        timeout=10,
    )
    return response.status_code, response.text
