"""The fake Verity under ``/verity``: send-message (``VERITY_API_KEY``), the GHL-webhook
forward target, and every other ``/verity/api/...`` path echoed back when it carries a valid
sandbox Clerk token (401 otherwise; ``/api/health`` is open)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.sandbox.clerk import verify_clerk
from services.sandbox.state import Sandbox, SandboxDep

__all__ = ["VERITY_PREFIX", "router"]

VERITY_PREFIX = "/verity"
SEND_MESSAGE = "/api/integrations/df-middleware/send-message"
GHL_FORWARD = "/api/integrations/ghl/webhook"

router = APIRouter()


@router.post(VERITY_PREFIX + SEND_MESSAGE)
async def verity_send(request: Request, sandbox: SandboxDep) -> JSONResponse:
    body = await request.json()
    status, payload = await _send(sandbox, request.headers.get("authorization"), body)
    sandbox.log.record("verity", "POST", SEND_MESSAGE, status, body, {}, request.headers.get("traceparent"))
    return JSONResponse(payload, status_code=status)


async def _send(sandbox: Sandbox, authorization: str | None, body: Any) -> tuple[int, Any]:
    if authorization != f"Bearer {sandbox.credentials.verity_key}":
        return 401, {"success": False, "error": "Unauthorized"}
    fault = await sandbox.faults.take("verity", "/send-message")
    if fault is not None and not fault.after:
        return fault.status or 500, {"success": False, "error": "injected"}
    if not body.get("to") or not body.get("body"):
        return 400, {"success": False, "error": "to and body are required"}
    message_id = "vmsg" + uuid.uuid4().hex[:16]
    sandbox.state.verity_messages[message_id] = body
    sent = {"success": True, "messageId": message_id, "chatId": "vchat" + uuid.uuid4().hex[:8], "status": "pending"}
    if fault is not None:  # sent, but the answer is lost
        return fault.status or 500, {"success": False, "error": "injected after the send"}
    return 200, sent


@router.post(VERITY_PREFIX + GHL_FORWARD)
async def verity_ghl_forward(request: Request, sandbox: SandboxDep) -> JSONResponse:
    raw = await request.body()
    forwarded = {
        "body": raw.decode(errors="replace"),
        "signature": request.headers.get("x-ghl-signature"),
        "forwarded": request.headers.get("x-middleware-forwarded"),
        "secret_present": bool(request.headers.get("x-middleware-secret")),
    }
    sandbox.state.verity_forwards.append(forwarded)
    sandbox.log.record("verity", "POST", GHL_FORWARD, 200, None, {}, request.headers.get("traceparent"))
    return JSONResponse({"success": True})


@router.get("/_sandbox/verity/forwards")
async def verity_forwards(sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(sandbox.state.verity_forwards)


@router.api_route(VERITY_PREFIX + "/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def verity_api(path: str, request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Every other Verity API path: checks the Clerk token and echoes the request."""
    rel = "/api/" + path
    raw = await request.body()
    body = json.loads(raw) if raw else None
    query = dict(request.query_params)
    fault = await sandbox.faults.take("verity", rel)
    user = verify_clerk(sandbox, request.headers.get("authorization"))
    status: int
    payload: Any
    if fault is not None:
        status, payload = fault.status or 500, {"error": f"injected failure at {rel}"}
    elif rel == "/api/health":
        status, payload = 200, {"status": "ok"}
    elif user is None:
        status, payload = 401, {"error": "Unauthorized"}
    elif "missing" in rel.split("/"):
        status, payload = 404, {"error": f"Not found: {rel}"}
    else:
        status, payload = 200, {"method": request.method, "path": rel, "query": query, "body": body, "user": user}
    sandbox.log.record("verity", request.method, rel, status, body, query, request.headers.get("traceparent"))
    return JSONResponse(payload, status_code=status)
