"""Fake GHL OAuth (G19): ``POST /ghl/oauth/token`` and its sandbox knob ``/_sandbox/ghl/oauth``.

Authorization codes ``code-*`` and the current refresh token are accepted; the refresh token
rotates, so an old one answers ``invalid_grant``, as GHL does."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.sandbox.ghl.request import GHL_PREFIX
from services.sandbox.state import Sandbox, SandboxDep

__all__ = ["router"]

router = APIRouter()


@router.post(GHL_PREFIX + "/oauth/token")
async def ghl_oauth_token(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """G19: authorization codes ``code-*`` and the current refresh token (which rotates:
    an old one answers ``invalid_grant``, as GHL does)."""
    form: dict[str, Any] = dict(await request.form())
    status, payload = _grant(sandbox, form)
    sandbox.log.record(
        "ghl",
        "POST",
        "/oauth/token",
        status,
        {"grant_type": form.get("grant_type")},
        {},
        request.headers.get("traceparent"),
    )
    return JSONResponse(payload, status_code=status)


@router.post("/_sandbox/ghl/oauth")
async def ghl_oauth_admin(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """``{"revoke_access": true}`` rejects every issued access token from now on;
    ``{"expires_in": n}`` sets the lifetime of the next tokens; ``{"provider_id": id}``
    sets the conversation provider GHL accepts."""
    spec = await request.json()
    if spec.get("revoke_access"):
        sandbox.state.oauth_access.clear()
    if "expires_in" in spec:
        sandbox.state.oauth_expires_in = int(spec["expires_in"])
    if "provider_id" in spec:  # the conversation provider GHL knows for this app
        sandbox.provider_id = str(spec["provider_id"])
    return JSONResponse({"ok": True})


def _grant(sandbox: Sandbox, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    state = sandbox.state
    if (form.get("client_id"), form.get("client_secret")) != sandbox.credentials.oauth_client:
        return 401, {"error": "invalid_client"}
    if form.get("user_type") != "Location":
        return 400, {"error": "invalid_request", "error_description": "user_type is required"}
    grant = form.get("grant_type")
    by_code = grant == "authorization_code" and str(form.get("code", "")).startswith("code-")
    by_refresh = (
        grant == "refresh_token"
        and bool(form.get("refresh_token"))
        and form.get("refresh_token") == state.oauth_refresh
    )
    if not (by_code or by_refresh):
        return 400, {"error": "invalid_grant", "error_description": "Invalid grant"}
    access, refresh = "oat-" + uuid.uuid4().hex, "ort-" + uuid.uuid4().hex
    state.oauth_access.add(access)
    state.oauth_refresh = refresh
    return 200, {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": state.oauth_expires_in,
        "refresh_token": refresh,
        "scope": "conversations.write conversations/message.write",
        "userType": "Location",
        "locationId": sandbox.location_id,
        "companyId": "sandbox-company",
    }
