"""The fake GHL's front door, ``/ghl/{path}``: bearer token (the location's OAuth token for the
provider-bound ``/conversations`` calls), 100 requests / 10 s per location with the real
``X-RateLimit-*`` headers and 429, injected faults, GHL's OpenAPI (422 when invalid), then
the handler; every answer is recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from services.infra.logging import get_logger
from services.sandbox.ghl.account import route_account
from services.sandbox.ghl.contacts import route_contacts
from services.sandbox.ghl.conversations import route_conversations
from services.sandbox.ghl.objects import route_objects
from services.sandbox.ghl.request import GHL_PREFIX, Answer, GhlRequest, not_found
from services.sandbox.state import Sandbox, SandboxDep

__all__ = ["dispatch", "router"]

log = get_logger(__name__)
# tried in order; the first that claims the path answers
ROUTES: tuple[Callable[[Sandbox, GhlRequest], Answer | None], ...] = (
    route_contacts, route_objects, route_conversations, route_account,
)  # fmt: skip

router = APIRouter()


@router.api_route(GHL_PREFIX + "/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
async def ghl(path: str, request: Request, sandbox: SandboxDep) -> Response:
    call = await _read(sandbox, path, request)
    status, payload, extra = await _serve(sandbox, call)
    sandbox.log.record("ghl", call.method, call.path, status, call.body, call.query, request.headers.get("traceparent"))
    return JSONResponse(payload, status_code=status, headers={**sandbox.limiter.headers(call.location), **extra})


def dispatch(sandbox: Sandbox, call: GhlRequest) -> Answer:
    """The handler's answer for a call the gate let through."""
    for route in ROUTES:
        answer = route(sandbox, call)
        if answer is not None:
            return answer
    return not_found(f"sandbox has no {call.method} {call.path}")


async def _read(sandbox: Sandbox, path: str, request: Request) -> GhlRequest:
    raw = await request.body()
    body: Any
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = "<invalid json>"
    query = dict(request.query_params)
    location = (
        query.get("locationId") or (body.get("locationId") if isinstance(body, dict) else None) or sandbox.location_id
    )
    headers = {k.lower(): v for k, v in request.headers.items()}
    return GhlRequest(request.method, "/" + path, query, body, headers, location)


async def _serve(sandbox: Sandbox, call: GhlRequest) -> tuple[int, Any, dict[str, str]]:
    refused = _refuse_token(sandbox, call)
    if refused is not None:
        return (*refused, {})
    if not sandbox.limiter.admit(call.location):
        return 429, {"statusCode": 429, "message": "Too Many Requests"}, {}
    fault = await sandbox.faults.take("ghl", call.path)
    if fault is not None and not fault.after:
        retry = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return fault.status or 500, {"statusCode": fault.status, "message": "injected"}, {**retry, **fault.headers}
    problems = sandbox.openapi.problems(call.method, call.path, call.headers, call.query, call.body)
    if problems:
        log.error("sandbox_invalid_request", vendor="ghl", method=call.method, path=call.path, problems=problems)
        return 422, {"statusCode": 422, "message": problems, "error": "Unprocessable Entity"}, {}
    answer = dispatch(sandbox, call)
    if fault is not None:  # written, but the answer is lost
        return fault.status or 500, {"statusCode": fault.status, "message": "injected after the write"}, fault.headers
    return (*answer, {})


def _refuse_token(sandbox: Sandbox, call: GhlRequest) -> Answer | None:
    """401 unless the bearer token fits the call: provider-bound ``/conversations`` calls take
    the location's OAuth token only (GHL refuses the private integration token there)."""
    given = call.headers.get("authorization", "")
    private = f"Bearer {sandbox.credentials.ghl_token}"
    if call.path.startswith("/conversations"):
        if given == private:
            return 401, {"statusCode": 401, "message": "You don't have access to the conversationProvider"}
        if given.removeprefix("Bearer ") not in sandbox.state.oauth_access:
            return 401, {"statusCode": 401, "message": "Invalid JWT"}
    elif given != private:
        return 401, {"statusCode": 401, "message": "Invalid JWT"}
    return None
