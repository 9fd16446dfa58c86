"""Sandbox vendors: stateful fake GHL and Aloware served over real HTTP (`dfm run sandbox`).

The fake GHL enforces the bearer token, the per-endpoint ``Version`` header, 100 requests /
10 s per location with the real ``X-RateLimit-*`` headers and 429, and validates every
request against GHL's OpenAPI (422 when invalid). The fake Aloware checks ``api_token``.
Both record every call (with the request's W3C ``traceparent``), accept injected faults through ``/_sandbox/faults``, and after each
write emit the webhook the real vendor would send to ``DFM_SANDBOX_WEBHOOK_URL`` (the
ingress), signed like the real sender, so echo suppression is tested end to end.

The fake Verity (under ``/verity``) takes send-message (``VERITY_API_KEY``) and the GHL
webhook forward, and answers every other ``/verity/api/...`` path by echoing the request
when it carries a valid sandbox Clerk token (401 otherwise; ``/api/health`` is open). The
fake Clerk (under ``/clerk``) lists the service user's sessions, mints RS256 session tokens
and publishes its JWKS; ``POST /_sandbox/clerk/expire-tokens`` makes Verity reject every
token minted so far, as after an expiry.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts.phone import to_e164
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.signing import basic_auth, ghl_ed25519_signature, load_private_key
from services.sandbox.openapi_check import GhlOpenApi

log = get_logger(__name__)
GHL_PREFIX = "/ghl"
ALOWARE_PREFIX = "/aloware/api/v1"
VERITY_PREFIX = "/verity"
CLERK_PREFIX = "/clerk"
CLERK_ISSUER = "https://clerk.sandbox.local"
CLERK_SERVICE_USER = "user_sandbox_service"
CLERK_SESSION = "sess_sandbox_0001"


@dataclass
class Fault:
    """An injected failure for the next ``count`` matching calls."""

    vendor: str
    count: int
    status: int | None = None
    latency_ms: int = 0
    path_contains: str = ""
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # the vendor performs the request, then answers ``status``: a write whose response is lost
    after: bool = False


@dataclass
class SandboxState:
    """Everything the fakes hold; reset by ``POST /_sandbox/reset``."""

    ghl_contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ghl_notes: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: collections.defaultdict(list))
    aloware_contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    ghl_window: dict[str, collections.deque[float]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )
    aloware_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7_100_001))
    verity_messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    verity_forwards: list[dict[str, Any]] = field(default_factory=list)
    clerk_minted: list[str] = field(default_factory=list)
    clerk_revoked: set[str] = field(default_factory=set)
    clerk_reject_all: bool = False
    oauth_access: set[str] = field(default_factory=set)
    oauth_refresh: str | None = None
    oauth_expires_in: int = 86_399
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    aloware_lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    object_records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sequences: dict[str, str] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)
    ghl_custom_fields: list[dict[str, Any]] = field(default_factory=list)


class Sandbox:
    """The fake vendors' behaviour, independent of routing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = SandboxState()
        self.openapi = GhlOpenApi()
        self.ghl_token = settings.ghl_api_key.get_secret_value() if settings.ghl_api_key else "sandbox-ghl-key"
        self.aloware_token = (
            settings.aloware_api_token.get_secret_value() if settings.aloware_api_token else "sandbox-aloware-token"
        )
        self.verity_key = (
            settings.verity_api_key.get_secret_value() if settings.verity_api_key else "sandbox-verity-key"
        )
        self.clerk_secret = (
            settings.clerk_secret_key.get_secret_value() if settings.clerk_secret_key else "sandbox-clerk-secret"
        )
        self.clerk_user = settings.clerk_service_user_id or CLERK_SERVICE_USER
        self.oauth_client = (settings.ghl_client_id or "sandbox-client-id",
                             settings.ghl_client_secret.get_secret_value() if settings.ghl_client_secret
                             else "sandbox-client-secret")
        self.provider_id = settings.ghl_conversation_provider_id or "sandbox-provider"
        self.clerk_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rate_limit = 100
        self.rate_window_s = 10.0
        self.webhook_url = settings.dfm_sandbox_webhook_url
        self._signing_key = (
            load_private_key(Path(settings.dfm_ghl_signing_key_file))
            if settings.dfm_ghl_signing_key_file else None
        )
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # --- plumbing -----------------------------------------------------------------------
    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=10)

    async def stop(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def mint_clerk_token(self, ttl_s: int) -> str:
        """A session JWT of the service user, signed with the sandbox key."""
        jti = uuid.uuid4().hex
        now = int(time.time())
        self.state.clerk_minted.append(jti)
        return jwt.encode({"sub": self.clerk_user, "sid": CLERK_SESSION, "iss": CLERK_ISSUER, "iat": now,
                           "nbf": now, "exp": now + ttl_s, "jti": jti}, self.clerk_key, algorithm="RS256",
                          headers={"kid": "sandbox"})

    def verify_clerk(self, authorization: str | None) -> str | None:
        """The user of a valid, unrevoked sandbox token (None otherwise)."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        try:
            claims = jwt.decode(authorization[7:], self.clerk_key.public_key(), algorithms=["RS256"],
                                issuer=CLERK_ISSUER)
        except jwt.InvalidTokenError:
            return None
        if self.state.clerk_reject_all or claims.get("jti") in self.state.clerk_revoked:
            return None
        return str(claims["sub"])

    def record(self, vendor: str, method: str, path: str, status: int, body: Any, query: dict[str, str]) -> None:
        self.state.calls.append({"vendor": vendor, "method": method, "path": path, "status": status,
                                 "body": body, "query": query, "at": time.time(),
                                 "traceparent": TRACEPARENT.get()})

    async def fault_for(self, vendor: str, path: str) -> Fault | None:
        for fault in self.state.faults:
            if fault.vendor == vendor and fault.path_contains in path and fault.count > 0:
                fault.count -= 1
                if fault.latency_ms:
                    await asyncio.sleep(fault.latency_ms / 1000)
                return fault if fault.status else None
        return None

    def emit(self, path: str, headers: dict[str, str], body: bytes) -> None:
        """POST a webhook to the ingress in the background (like the vendor would)."""
        if not self.webhook_url or self._client is None:
            return
        task = asyncio.create_task(self._post(path, headers, body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, path: str, headers: dict[str, str], body: bytes) -> None:
        assert self._client is not None
        try:
            await self._client.post(self.webhook_url.rstrip("/") + path, content=body,
                                    headers={"content-type": "application/json", **headers})
        except httpx.HTTPError as exc:
            log.warning("sandbox_webhook_failed", error=type(exc).__name__)

    # --- GHL ------------------------------------------------------------------------------
    def ghl_rate_headers(self, location: str) -> dict[str, str]:
        window = self.state.ghl_window[location]
        now = time.monotonic()
        while window and window[0] <= now - self.rate_window_s:
            window.popleft()
        return {
            "X-RateLimit-Limit-Daily": "200000",
            "X-RateLimit-Daily-Remaining": "199000",
            "X-RateLimit-Interval-Milliseconds": str(int(self.rate_window_s * 1000)),
            "X-RateLimit-Max": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - len(window))),
        }

    def ghl_webhook(self, kind: str, contact: dict[str, Any]) -> None:
        if self._signing_key is None:
            return
        body = json.dumps({
            "type": kind, "locationId": contact.get("locationId"), **contact,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "webhookId": str(uuid.uuid4()),
        }).encode()
        self.emit("/api/webhooks/ghl", {"x-ghl-signature": ghl_ed25519_signature(self._signing_key, body)}, body)

    def ghl_find(self, *, phone: str | None = None, email: str | None = None) -> dict[str, Any] | None:
        for contact in self.state.ghl_contacts.values():
            if phone and contact.get("phone") == phone:
                return contact
            if email and (contact.get("email") or "").lower() == email.lower():
                return contact
        return None

    # --- Aloware ------------------------------------------------------------------------
    def aloware_find(self, phone: str) -> dict[str, Any] | None:
        for contact in self.state.aloware_contacts.values():
            if contact.get("phone_number") == phone:
                return contact
        return None

    def aloware_webhook(self, event: str, contact: dict[str, Any]) -> None:
        user = self.settings.aloware_webhook_basic_user
        passwords = self.settings.aloware_webhook_basic_pass
        if not user or not passwords:
            return
        body = json.dumps({"event": event, "body": contact}).encode()
        self.emit("/api/webhooks/aloware",
                  {"authorization": basic_auth(user, passwords[0].get_secret_value())}, body)


GHL_CONTACT_FIELDS = (
    "firstName", "lastName", "name", "email", "phone", "address1", "city", "state", "postalCode",
    "website", "timezone", "dnd", "dndSettings", "source", "dateOfBirth", "country",
    "companyName", "assignedTo",
)
ALOWARE_FIELDS = ("first_name", "last_name", "name", "email", "timezone", "country", "state",
                  "city", "lead_source", "intake_source")


TRACEPARENT: ContextVar[str | None] = ContextVar("sandbox_traceparent", default=None)


class TraceparentCapture:
    """Makes the request's ``traceparent`` header available to :meth:`Sandbox.record`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            value = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None)
            TRACEPARENT.set(value)
        await self.app(scope, receive, send)


def create_sandbox_app(settings: Settings) -> FastAPI:
    """The fakes as one ASGI app: GHL under /ghl, Aloware under /aloware/api/v1."""
    sandbox = Sandbox(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await sandbox.start()
        yield
        await sandbox.stop()

    app = FastAPI(title="DF-Middleware sandbox vendors", lifespan=lifespan)
    app.state.sandbox = sandbox
    app.add_middleware(TraceparentCapture)

    # --- admin ----------------------------------------------------------------------------
    @app.get("/_sandbox/calls")
    async def calls(vendor: str | None = None) -> JSONResponse:
        found = [c for c in sandbox.state.calls if vendor in (None, c["vendor"])]
        return JSONResponse(found)

    @app.post("/_sandbox/faults")
    async def faults(request: Request) -> JSONResponse:
        spec = await request.json()
        sandbox.state.faults.append(Fault(**spec))
        return JSONResponse({"ok": True})

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> JSONResponse:
        """The vendor recovers: every injected fault is dropped, state is kept."""
        sandbox.state.faults.clear()
        return JSONResponse({"ok": True})

    @app.post("/_sandbox/reset")
    async def reset() -> JSONResponse:
        sandbox.state = SandboxState()
        return JSONResponse({"ok": True})

    @app.get("/_sandbox/ghl/contacts")
    async def ghl_contacts() -> JSONResponse:
        return JSONResponse(list(sandbox.state.ghl_contacts.values()))

    @app.patch("/_sandbox/ghl/contacts/{contact_id}")
    async def ghl_edit_silently(contact_id: str, request: Request) -> JSONResponse:
        """Change a GHL contact without sending its webhook (a webhook GHL lost)."""
        contact = sandbox.state.ghl_contacts.get(contact_id)
        if contact is None:
            return JSONResponse({"error": "no such contact"}, status_code=404)
        contact.update(await request.json())
        contact["dateUpdated"] = datetime.now(UTC).isoformat()
        return JSONResponse(contact)

    @app.post("/_sandbox/ghl/contacts/{contact_id}/webhook/{kind}")
    async def ghl_send_webhook(contact_id: str, kind: str) -> JSONResponse:
        """Have GHL send a webhook of ``kind`` (e.g. ContactDndUpdate) for the contact as it is."""
        contact = sandbox.state.ghl_contacts.get(contact_id)
        if contact is None:
            return JSONResponse({"error": "no such contact"}, status_code=404)
        sandbox.ghl_webhook(kind, contact)
        return JSONResponse({"sent": kind})

    @app.delete("/_sandbox/ghl/contacts/{contact_id}")
    async def ghl_delete_silently(contact_id: str) -> JSONResponse:
        """Delete a GHL contact without sending its webhook."""
        found = sandbox.state.ghl_contacts.pop(contact_id, None)
        return JSONResponse({"deleted": found is not None}, status_code=200 if found else 404)

    @app.post("/_sandbox/aloware/lists")
    async def aloware_new_list(request: Request) -> JSONResponse:
        """Create a power-dialer list by hand, as an Aloware admin would."""
        spec = await request.json()
        list_id = str(next(sandbox.state.aloware_ids))
        sandbox.state.aloware_lists[list_id] = {"id": list_id, "name": spec["name"], "contact_ids": []}
        return JSONResponse(sandbox.state.aloware_lists[list_id])

    @app.post("/_sandbox/ghl/custom-fields")
    async def ghl_new_custom_field(request: Request) -> JSONResponse:
        """Define a contact custom field, as a GHL admin would (``name``, ``fieldKey``;
        optional ``id``, ``dataType``); contacts then carry it as ``{id, value}``."""
        spec = await request.json()
        custom_field = {"id": str(spec.get("id") or "cf" + uuid.uuid4().hex[:18]), "name": spec["name"],
                        "fieldKey": spec.get("fieldKey") or "contact." + spec["name"].lower().replace(" ", "_"),
                        "dataType": spec.get("dataType", "TEXT"), "model": "contact",
                        "locationId": settings.ghl_location_id or "sandbox-location",
                        "position": len(sandbox.state.ghl_custom_fields)}
        sandbox.state.ghl_custom_fields.append(custom_field)
        return JSONResponse(custom_field)

    @app.get("/_sandbox/ghl/objects/{key}")
    async def ghl_object_records(key: str) -> JSONResponse:
        return JSONResponse(list(sandbox.state.object_records.get(key, {}).values()))

    @app.get("/_sandbox/aloware/sequences")
    async def aloware_sequences() -> JSONResponse:
        return JSONResponse(sandbox.state.sequences)

    @app.get("/_sandbox/aloware/lists")
    async def aloware_lists() -> JSONResponse:
        return JSONResponse(list(sandbox.state.aloware_lists.values()))

    @app.patch("/_sandbox/aloware/contacts/{contact_id}")
    async def aloware_edit_silently(contact_id: str, request: Request) -> JSONResponse:
        """Change an Aloware contact without sending its webhook (a webhook Aloware lost)."""
        contact = sandbox.state.aloware_contacts.get(contact_id)
        if contact is None:
            return JSONResponse({"error": "no such contact"}, status_code=404)
        contact.update(await request.json())
        contact["updated_at"] = datetime.now(UTC).isoformat()
        return JSONResponse(contact)

    @app.get("/_sandbox/aloware/contacts")
    async def aloware_contacts() -> JSONResponse:
        return JSONResponse(list(sandbox.state.aloware_contacts.values()))

    @app.post("/_sandbox/rate-limit")
    async def set_rate_limit(request: Request) -> JSONResponse:
        spec = await request.json()
        sandbox.rate_limit = int(spec["per_10s"])
        sandbox.rate_window_s = float(spec.get("window_s", 10))
        return JSONResponse({"ok": True})

    # --- fake GHL -----------------------------------------------------------------------
    @app.post(GHL_PREFIX + "/oauth/token")
    async def ghl_oauth_token(request: Request) -> JSONResponse:
        """G19: authorization codes ``code-*`` and the current refresh token (which rotates:
        an old one answers ``invalid_grant``, as GHL does)."""
        form = dict(await request.form())
        state = sandbox.state

        def answer(status: int, payload: dict[str, Any]) -> JSONResponse:
            sandbox.record("ghl", "POST", "/oauth/token", status, {"grant_type": form.get("grant_type")}, {})
            return JSONResponse(payload, status_code=status)

        if (form.get("client_id"), form.get("client_secret")) != sandbox.oauth_client:
            return answer(401, {"error": "invalid_client"})
        if form.get("user_type") != "Location":
            return answer(400, {"error": "invalid_request", "error_description": "user_type is required"})
        grant = form.get("grant_type")
        if grant == "authorization_code" and str(form.get("code", "")).startswith("code-"):
            pass
        elif grant == "refresh_token" and form.get("refresh_token") and form.get("refresh_token") == state.oauth_refresh:
            pass
        else:
            return answer(400, {"error": "invalid_grant", "error_description": "Invalid grant"})
        access, refresh = "oat-" + uuid.uuid4().hex, "ort-" + uuid.uuid4().hex
        state.oauth_access.add(access)
        state.oauth_refresh = refresh
        return answer(200, {"access_token": access, "token_type": "Bearer", "expires_in": state.oauth_expires_in,
                            "refresh_token": refresh, "scope": "conversations.write conversations/message.write",
                            "userType": "Location", "locationId": settings.ghl_location_id or "sandbox-location",
                            "companyId": "sandbox-company"})

    @app.post("/_sandbox/ghl/oauth")
    async def ghl_oauth_admin(request: Request) -> JSONResponse:
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

    @app.post("/_sandbox/ghl/appointments")
    async def ghl_new_appointment(request: Request) -> JSONResponse:
        """An appointment GHL knows (G15 answers it), e.g. ``{"id": …, "contactId": …}``."""
        appointment = await request.json()
        sandbox.state.appointments[str(appointment["id"])] = appointment
        return JSONResponse(appointment)

    @app.get("/_sandbox/ghl/conversations")
    async def ghl_conversations() -> JSONResponse:
        return JSONResponse({"conversations": list(sandbox.state.conversations.values()),
                             "messages": list(sandbox.state.messages.values())})

    @app.api_route(GHL_PREFIX + "/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def ghl(path: str, request: Request) -> Response:
        method, rel = request.method, "/" + path
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = "<invalid json>"
        query = dict(request.query_params)
        headers = {k.lower(): v for k, v in request.headers.items()}
        location = query.get("locationId") or (body.get("locationId") if isinstance(body, dict) else None) \
            or settings.ghl_location_id or "sandbox-location"

        def answer(status: int, payload: Any, extra: dict[str, str] | None = None) -> JSONResponse:
            sandbox.record("ghl", method, rel, status, body, query)
            return JSONResponse(payload, status_code=status,
                                headers={**sandbox.ghl_rate_headers(location), **(extra or {})})

        given = headers.get("authorization", "")
        if rel.startswith("/conversations"):  # provider-bound: the location's OAuth token only
            if given == f"Bearer {sandbox.ghl_token}":
                return answer(401, {"statusCode": 401,
                                    "message": "You don't have access to the conversationProvider"})
            if given.removeprefix("Bearer ") not in sandbox.state.oauth_access:
                return answer(401, {"statusCode": 401, "message": "Invalid JWT"})
        elif given != f"Bearer {sandbox.ghl_token}":
            return answer(401, {"statusCode": 401, "message": "Invalid JWT"})
        window = sandbox.state.ghl_window[location]
        sandbox.ghl_rate_headers(location)  # drops expired entries
        if len(window) >= sandbox.rate_limit:
            return answer(429, {"statusCode": 429, "message": "Too Many Requests"})
        window.append(time.monotonic())
        fault = await sandbox.fault_for("ghl", rel)
        if fault is not None and not fault.after:
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return answer(fault.status or 500, {"statusCode": fault.status, "message": "injected"},
                          {**extra, **fault.headers})
        problems = sandbox.openapi.problems(method, rel, headers, query, body)
        if problems:
            log.error("sandbox_invalid_request", vendor="ghl", method=method, path=rel, problems=problems)
            return answer(422, {"statusCode": 422, "message": problems, "error": "Unprocessable Entity"})
        result = _ghl_route(sandbox, method, rel, query, body, location)
        if fault is not None:  # written, but the answer is lost
            return answer(fault.status or 500, {"statusCode": fault.status, "message": "injected after the write"},
                          fault.headers)
        return answer(*result)

    # --- fake Aloware ---------------------------------------------------------------------
    @app.api_route(ALOWARE_PREFIX + "/{path:path}", methods=["GET", "POST"])
    async def aloware(path: str, request: Request) -> Response:
        method, rel = request.method, "/" + path
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        query = dict(request.query_params)

        def answer(status: int, payload: Any) -> JSONResponse:
            sandbox.record("aloware", method, rel, status, {k: v for k, v in body.items() if k != "api_token"},
                           {k: v for k, v in query.items() if k != "api_token"})
            return JSONResponse(payload, status_code=status)

        token = query.get("api_token") if method == "GET" else body.get("api_token")
        if token != sandbox.aloware_token:
            return answer(401, {"error": "Unauthenticated."})
        fault = await sandbox.fault_for("aloware", rel)
        if fault is not None:
            return answer(fault.status or 500, {"error": "injected"})
        return answer(*_aloware_route(sandbox, method, rel, query, body))

    # --- fake Verity (send-message API and the GHL-webhook forward target) ------------
    @app.post(VERITY_PREFIX + "/api/integrations/df-middleware/send-message")
    async def verity_send(request: Request) -> JSONResponse:
        body = await request.json()
        status, payload = 200, None
        if request.headers.get("authorization") != f"Bearer {sandbox.verity_key}":
            status, payload = 401, {"success": False, "error": "Unauthorized"}
        elif (fault := await sandbox.fault_for("verity", "/send-message")) is not None and not fault.after:
            status, payload = fault.status or 500, {"success": False, "error": "injected"}
        elif not body.get("to") or not body.get("body"):
            status, payload = 400, {"success": False, "error": "to and body are required"}
        else:
            message_id = "vmsg" + uuid.uuid4().hex[:16]
            sandbox.state.verity_messages[message_id] = body
            payload = {"success": True, "messageId": message_id, "chatId": "vchat" + uuid.uuid4().hex[:8],
                       "status": "pending"}
            if fault is not None:  # sent, but the answer is lost
                status, payload = fault.status or 500, {"success": False, "error": "injected after the send"}
        sandbox.record("verity", "POST", "/api/integrations/df-middleware/send-message", status, body, {})
        return JSONResponse(payload, status_code=status)

    @app.post(VERITY_PREFIX + "/api/integrations/ghl/webhook")
    async def verity_ghl_forward(request: Request) -> JSONResponse:
        raw = await request.body()
        forwarded = {"body": raw.decode(errors="replace"),
                     "signature": request.headers.get("x-ghl-signature"),
                     "forwarded": request.headers.get("x-middleware-forwarded"),
                     "secret_present": bool(request.headers.get("x-middleware-secret"))}
        sandbox.state.verity_forwards.append(forwarded)
        sandbox.record("verity", "POST", "/api/integrations/ghl/webhook", 200, None, {})
        return JSONResponse({"success": True})

    @app.get("/_sandbox/verity/forwards")
    async def verity_forwards() -> JSONResponse:
        return JSONResponse(sandbox.state.verity_forwards)

    @app.api_route(VERITY_PREFIX + "/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def verity_api(path: str, request: Request) -> JSONResponse:
        """Every other Verity API path: checks the Clerk token and echoes the request."""
        rel = "/api/" + path
        raw = await request.body()
        body = json.loads(raw) if raw else None
        query = dict(request.query_params)
        fault = await sandbox.fault_for("verity", rel)
        user = sandbox.verify_clerk(request.headers.get("authorization"))
        if fault is not None:
            status, payload = fault.status or 500, {"error": f"injected failure at {rel}"}
        elif rel == "/api/health":
            status, payload = 200, {"status": "ok"}
        elif user is None:
            status, payload = 401, {"error": "Unauthorized"}
        elif "missing" in rel.split("/"):
            status, payload = 404, {"error": f"Not found: {rel}"}
        else:
            status, payload = 200, {"method": request.method, "path": rel, "query": query, "body": body,
                                    "user": user}
        sandbox.record("verity", request.method, rel, status, body, query)
        return JSONResponse(payload, status_code=status)

    # --- fake Clerk Backend API (service-user sessions and tokens) ---------------------
    @app.get(CLERK_PREFIX + "/v1/sessions")
    async def clerk_sessions(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {sandbox.clerk_secret}":
            return JSONResponse({"errors": [{"message": "Unauthorized"}]}, status_code=401)
        user = request.query_params.get("user_id")
        sessions = [] if user != sandbox.clerk_user else [
            {"object": "session", "id": CLERK_SESSION, "user_id": user, "status": "active",
             "last_active_at": int(time.time() * 1000)},
            {"object": "session", "id": "sess_sandbox_old", "user_id": user, "status": "ended",
             "last_active_at": int(time.time() * 1000) - 86_400_000}]
        status = request.query_params.get("status")
        sessions = [x for x in sessions if status in (None, x["status"])]
        sandbox.record("clerk", "GET", "/sessions", 200, None, dict(request.query_params))
        return JSONResponse(sessions)

    @app.post(CLERK_PREFIX + "/v1/sessions/{session_id}/tokens")
    async def clerk_token(session_id: str, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {sandbox.clerk_secret}":
            return JSONResponse({"errors": [{"message": "Unauthorized"}]}, status_code=401)
        if session_id != CLERK_SESSION:
            return JSONResponse({"errors": [{"message": "session not found"}]}, status_code=404)
        body = json.loads(await request.body() or b"{}")
        token = sandbox.mint_clerk_token(int(body.get("expires_in_seconds", 60)))
        sandbox.record("clerk", "POST", f"/sessions/{session_id}/tokens", 200, body, {})
        return JSONResponse({"object": "token", "jwt": token})

    @app.get(CLERK_PREFIX + "/.well-known/jwks.json")
    async def clerk_jwks() -> JSONResponse:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(sandbox.clerk_key.public_key()))
        return JSONResponse({"keys": [{**jwk, "kid": "sandbox", "use": "sig", "alg": "RS256"}]})

    @app.post("/_sandbox/clerk/mint")
    async def clerk_mint(request: Request) -> JSONResponse:
        """A token with chosen claims (expired, other issuer...) signed with the sandbox key."""
        claims = await request.json()
        now = int(time.time())
        claims = {"sub": sandbox.clerk_user, "iss": CLERK_ISSUER, "iat": now, "exp": now + 600, **claims}
        return JSONResponse({"jwt": jwt.encode(claims, sandbox.clerk_key, algorithm="RS256",
                                               headers={"kid": "sandbox"})})

    @app.post("/_sandbox/clerk/expire-tokens")
    async def clerk_expire(request: Request) -> JSONResponse:
        """Every token minted so far is rejected by the fake Verity from now on; with
        ``?all=true`` every future token too (a Verity that no longer trusts the instance)."""
        sandbox.state.clerk_revoked.update(sandbox.state.clerk_minted)
        sandbox.state.clerk_reject_all = request.query_params.get("all") == "true"
        return JSONResponse({"revoked": len(sandbox.state.clerk_revoked)})

    return app


def _ghl_route(sandbox: Sandbox, method: str, path: str, query: dict[str, str], body: Any,
               location: str) -> tuple[int, Any]:
    state = sandbox.state
    parts = [p for p in path.split("/") if p]
    if parts == ["contacts", "search", "duplicate"]:
        phone = to_e164(query.get("number")) if query.get("number") else None
        return 200, {"contact": sandbox.ghl_find(phone=phone, email=query.get("email"))}
    if parts == ["contacts"] and method == "POST":
        phone = to_e164(body.get("phone")) if body.get("phone") else None
        existing = sandbox.ghl_find(phone=phone, email=body.get("email"))
        if existing:
            return 400, {"statusCode": 400, "message": "This location does not allow duplicated contacts.",
                         "meta": {"contactId": existing["id"], "contactName": existing.get("firstName"),
                                  "matchingField": "phone" if phone else "email"}}
        contact_id = "sbx" + uuid.uuid4().hex[:17]
        contact = {"id": contact_id, "locationId": location,
                   **{k: body[k] for k in GHL_CONTACT_FIELDS if k in body},
                   "tags": [t.lower() for t in body.get("tags", [])],
                   "customFields": [{"id": f["id"], "value": f.get("field_value", f.get("value"))}
                                    for f in body.get("customFields", []) if isinstance(f, dict) and "id" in f],
                   "dateAdded": datetime.now(UTC).isoformat(), "dateUpdated": datetime.now(UTC).isoformat()}
        if phone:
            contact["phone"] = phone
        state.ghl_contacts[contact_id] = contact
        sandbox.ghl_webhook("ContactCreate", contact)
        return 201, {"contact": contact}
    if len(parts) >= 2 and parts[0] == "contacts":
        contact = state.ghl_contacts.get(parts[1])
        if contact is None:
            return 404, {"statusCode": 404, "message": "Contact not found"}
        if len(parts) == 2 and method == "GET":
            return 200, {"contact": contact}
        if len(parts) == 2 and method == "PUT":
            changed = False
            for key in GHL_CONTACT_FIELDS:
                if key in body and contact.get(key) != body[key]:
                    contact[key] = to_e164(body[key]) if key == "phone" else body[key]
                    changed = True
            values = {f["id"]: f.get("field_value", f.get("value")) for f in body.get("customFields", [])
                      if isinstance(f, dict) and "id" in f}  # GHL updates the fields named, by id
            held = {f["id"]: f.get("value") for f in contact.get("customFields", [])}
            if any(held.get(k) != v for k, v in values.items()):
                contact["customFields"] = [{"id": k, "value": v} for k, v in {**held, **values}.items()]
                changed = True
            if changed:
                contact["dateUpdated"] = datetime.now(UTC).isoformat()
                sandbox.ghl_webhook("ContactUpdate", contact)
            return 200, {"succeded": True, "contact": contact}
        if len(parts) == 2 and method == "DELETE":
            del state.ghl_contacts[parts[1]]
            sandbox.ghl_webhook("ContactDelete", contact)
            return 200, {"succeded": True}
        if parts[2:] == ["tags"]:
            tags = [t.lower() for t in body["tags"]]
            before = list(contact.get("tags", []))
            if method == "POST":
                contact["tags"] = before + [t for t in tags if t not in before]
            else:
                contact["tags"] = [t for t in before if t not in tags]
            if contact["tags"] != before:
                sandbox.ghl_webhook("ContactTagUpdate", contact)
            return (201 if method == "POST" else 200), {"tags": contact["tags"]}
        if parts[2:] == ["notes"] and method == "GET":
            return 200, {"notes": list(state.ghl_notes.get(contact["id"], []))}
        if parts[2:] == ["notes"] and method == "POST":
            note = {"id": "note" + uuid.uuid4().hex[:16], "body": body["body"], "contactId": contact["id"],
                    "dateAdded": datetime.now(UTC).isoformat()}
            state.ghl_notes[contact["id"]].append(note)
            return 201, {"note": note}
    if parts and parts[0] == "objects" and len(parts) >= 3 and parts[2] == "records":
        return _ghl_objects(sandbox, method, parts, body)
    if parts and parts[0] == "conversations":
        return _ghl_conversations(sandbox, method, parts, query, body, location)
    if parts[:3] == ["calendars", "events", "appointments"] and len(parts) == 4 and method == "GET":
        appointment = state.appointments.get(parts[3])
        if appointment is None:
            return 404, {"statusCode": 404, "message": "Appointment not found"}
        return 200, {"event": appointment}
    if len(parts) == 3 and parts[0] == "locations" and parts[2] == "customFields" and method == "GET":
        if parts[1] != location:
            return 403, {"statusCode": 403, "message": "The token does not have access to this location"}
        model = query.get("model") or "contact"
        return 200, {"customFields": [f for f in state.ghl_custom_fields if model in ("all", f["model"])]}
    if parts == ["users"] and method == "GET":
        return 200, {"users": [{"id": "sbxUserChris", "name": "Chris Rep", "email": "chris.rep@example.com"},
                               {"id": "sbxUserRafi", "name": "Rafi Agent", "email": "rafi.agent@example.com"}]}
    return 404, {"statusCode": 404, "message": f"sandbox has no {method} {path}"}


def _ghl_objects(sandbox: Sandbox, method: str, parts: list[str], body: Any) -> tuple[int, Any]:
    """Custom-object records (G16–G18), unique on the ``broadcast_id`` property."""
    key = parts[1]
    records = sandbox.state.object_records.setdefault(key, {})
    now = datetime.now(UTC).isoformat()
    if parts[3:] == ["search"] and method == "POST":
        query = str(body.get("query") or "")
        found = [r for r in records.values() if query in json.dumps(r["properties"])]
        return 200, {"records": found[:20], "total": len(found)}
    if len(parts) == 3 and method == "POST":
        props = body.get("properties") or {}
        clash = next((r for r in records.values()
                      if props.get("broadcast_id") and r["properties"].get("broadcast_id") == props["broadcast_id"]), None)
        if clash is not None:
            return 400, {"statusCode": 400, "message": "Duplicate record", "errors": [{
                "errorCode": "duplicate_record", "fieldKey": f"{key}.broadcast_id", "conflictingRecordId": clash["id"]}]}
        record = {"id": "rec" + uuid.uuid4().hex[:16], "properties": props, "dateAdded": now, "dateUpdated": now}
        records[record["id"]] = record
        return 201, {"record": record}
    if len(parts) == 4 and method == "PUT":
        record = records.get(parts[3])
        if record is None:
            return 404, {"statusCode": 404, "message": "Record not found"}
        record["properties"] = {**record["properties"], **(body.get("properties") or {})}
        record["dateUpdated"] = now
        return 200, {"record": record}
    return 404, {"statusCode": 404, "message": "sandbox has no such objects route"}


def _ghl_conversations(sandbox: Sandbox, method: str, parts: list[str], query: dict[str, str], body: Any,
                       location: str) -> tuple[int, Any]:
    state = sandbox.state
    now = datetime.now(UTC).isoformat()
    if parts == ["conversations", "search"] and method == "GET":
        found = [c for c in state.conversations.values() if c["contactId"] == query.get("contactId")]
        return 200, {"conversations": found, "total": len(found)}
    if parts == ["conversations"] and method == "POST":
        if body["contactId"] not in state.ghl_contacts:
            return 400, {"statusCode": 400, "message": "Contact not found"}
        conversation = {"id": "conv" + uuid.uuid4().hex[:16], "contactId": body["contactId"],
                        "locationId": body["locationId"], "dateAdded": now, "dateUpdated": now, "deleted": False}
        state.conversations[conversation["id"]] = conversation
        return 201, {"success": True, "conversation": conversation}
    if parts == ["conversations", "messages", "inbound"] and method == "POST":
        if body.get("conversationProviderId") != sandbox.provider_id or body.get("type") != "SMS":
            return 400, {"statusCode": 400, "message": "Incorrect conversationProviderId/type"}
        conversation = state.conversations.get(body.get("conversationId", ""))
        if conversation is None or conversation["contactId"] != body.get("contactId"):
            return 400, {"statusCode": 400, "message": "Conversation not found for the contact"}
        message = {"id": "msg" + uuid.uuid4().hex[:16], "conversationId": conversation["id"],
                   "contactId": body["contactId"], "body": body.get("message"), "direction": body.get("direction"),
                   "dateAdded": body.get("date") or now, "status": "delivered", "messageType": "TYPE_SMS",
                   "attachments": list(body.get("attachments") or [])}
        state.messages[message["id"]] = message
        return 200, {"success": True, "conversationId": conversation["id"], "messageId": message["id"],
                     "message": "Message added", "contactId": body["contactId"], "dateAdded": now}
    if len(parts) == 3 and parts[2] == "messages" and method == "GET":
        items = [m for m in state.messages.values() if m["conversationId"] == parts[1]]
        return 200, {"messages": {"lastMessageId": items[-1]["id"] if items else None, "nextPage": False,
                                  "messages": list(reversed(items))}}
    if len(parts) == 4 and parts[1] == "messages" and parts[3] == "status" and method == "PUT":
        message = state.messages.get(parts[2])
        if message is None:
            message = {"id": parts[2], "external": True}
            state.messages[parts[2]] = message
        message["status"] = body["status"]
        if body.get("error"):
            message["error"] = body["error"]
        return 200, {"conversationId": message.get("conversationId"), "messageId": parts[2], "status": body["status"]}
    return 404, {"statusCode": 404, "message": f"sandbox has no {method} /{'/'.join(parts)}"}


def _aloware_route(sandbox: Sandbox, method: str, path: str, query: dict[str, str],
                   body: dict[str, Any]) -> tuple[int, Any]:
    state = sandbox.state
    if path == "/webhook/contact/phone-number" and method == "GET":
        phone = to_e164(query.get("phone_number"))
        if phone is None:
            return 400, {"error": "Phone number is empty or invalid."}
        found = sandbox.aloware_find(phone)
        return (200, found) if found else (404, {"error": "Contact not found."})
    if path == "/webhook/forms" and method == "POST":
        phone = to_e164(body.get("phone_number"))
        if phone is None:
            return 400, {"error": "Phone number is empty or invalid."}
        existing = sandbox.aloware_find(phone)
        if existing is None:
            contact = {"id": str(next(state.aloware_ids)), "phone_number": phone, "tags": [],
                       "is_dnc": False, **{k: body[k] for k in ALOWARE_FIELDS if body.get(k)},
                       "updated_at": datetime.now(UTC).isoformat()}
            state.aloware_contacts[contact["id"]] = contact
            sandbox.aloware_webhook("Contact Created", contact)
            return 200, {"message": "Lead created."}
        if body.get("force_update"):
            changed = False
            for key in ALOWARE_FIELDS:
                if body.get(key) and existing.get(key) != body[key]:
                    existing[key] = body[key]
                    changed = True
            if changed:
                existing["updated_at"] = datetime.now(UTC).isoformat()
                sandbox.aloware_webhook("Contact Updated", existing)
        return 200, {"message": "Lead updated."}
    if path == "/webhook/powerdialer-remove-contact-from-lists" and method == "POST":
        contact = state.aloware_contacts.get(str(body.get("contact_id")))
        if contact is None:
            return 404, {"message": "The contact id does not exist."}
        contact["lists"] = []
        for call_list in state.aloware_lists.values():
            call_list["contact_ids"] = [c for c in call_list["contact_ids"] if c != contact["id"]]
        return 200, {"message": "Contact removed from all lists."}
    if path == "/webhook/powerdialer-add-contact-to-lists" and method == "POST":
        call_list = state.aloware_lists.get(str(body.get("list_id")))
        if call_list is None:
            return 400, {"message": "The list id does not exist."}
        for contact_id in body.get("contact_ids") or []:
            if str(contact_id) not in state.aloware_contacts:
                return 404, {"message": "The contact id does not exist."}
            if str(contact_id) not in call_list["contact_ids"]:
                call_list["contact_ids"].append(str(contact_id))
        return 200, {"message": "Contacts added to the list."}
    if path == "/webhook/powerdialer-clear-list" and method == "POST":
        call_list = state.aloware_lists.get(str(body.get("list_id")))
        if call_list is None:
            return 400, {"message": "The list id does not exist."}
        call_list["contact_ids"] = []
        return 200, {"message": "List cleared."}
    if path == "/webhook/sequence-enroll" and method == "POST":
        phone = to_e164(body.get("phone_number"))
        if not body.get("sequence_id") or phone is None:
            return 400, {"message": "sequence_id and phone_number are required"}
        state.sequences[phone] = str(body["sequence_id"])
        return 200, {"message": "Contact enrolled in the sequence."}
    if path == "/webhook/sequence-disenroll" and method == "POST":
        state.sequences.pop(to_e164(body.get("phone_number")) or "", None)
        return 200, {"message": "Contact disenrolled."}
    if path == "/call-lists" and method == "GET":
        return 200, {"data": [{"id": int(k), "name": v["name"], "description": None} for k, v in
                              state.aloware_lists.items()]}
    if path == "/webhook/users" and method == "GET":
        return 200, [{"id": 3100, "name": "Chris Rep", "email": "chris.rep@example.com", "status": 1},
                     {"id": 3200, "name": "Rafi Agent", "email": "rafi.agent@example.com", "status": 1}]
    return 404, {"error": f"sandbox has no {method} {path}"}
