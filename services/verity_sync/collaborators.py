"""The narrow collaborators verity-sync's executor performs operations with: each owns one
thing it talks to (Verity's API, Verity's database, GHL's lookups, GHL's status reports, the
WEBHOOKS stream) and knows nothing of rules."""

from __future__ import annotations

from typing import Any

import asyncpg
from pydantic import SecretStr

from contracts.envelope import AuthInfo, WebhookEvent
from contracts.subjects import EntityType, Source
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.http import VendorHttp, parse_body
from services.infra.broker import connect
from services.infra.errors import Cause, Misconfigured, OutcomeUnknown, Permanent, RetryLater, status_cause
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.verity_db import VerityDatabase
from services.verity_sync.rules.ops import Reach

log = get_logger(__name__)
FORWARD_PATH = "/api/integrations/ghl/webhook"
SEND_PATH = "/api/integrations/df-middleware/send-message"
REACHED = ("sent", "delivered", "opened", "clicked")


def forward_secret(settings: Settings) -> str | None:
    """The ``X-Middleware-Secret`` of the F-1 forward: ``VERITY_FORWARD_SECRET``. Outside
    production ``VERITY_WEBHOOK_SECRET`` stands in, as before; in production nothing does. It
    is the secret Verity's texting/broadcast webhooks authenticate with, so sending it on every
    forward gave whoever read one forwarded request or one Verity log the power to forge
    texting events, STOP/START included (security-audit F13)."""
    if settings.verity_forward_secret is not None:
        return settings.verity_forward_secret.get_secret_value()
    if settings.node_env != "production" and settings.verity_webhook_secret:
        return settings.verity_webhook_secret[0].get_secret_value()
    return None


class VerityApi:
    """Verity's HTTP API as verity-sync writes to it: the F-1 forward and V1 send-message
    (spec/outbound.md §2.4)."""

    def __init__(self, http: VendorHttp, *, secret: str | None, api_key: SecretStr | None) -> None:
        self.http = http
        self._secret = secret
        self._api_key = api_key

    async def aclose(self) -> None:
        await self.http.aclose()

    async def forward(self, body: bytes, signature: str | None) -> int:
        """POST GHL's bytes as they came; Verity's status (a 2xx or a 4xx: a 5xx, 429 or
        transport failure is raised as ``RetryLater``)."""
        headers = {"Content-Type": "application/json", "X-Middleware-Forwarded": "true"}
        if self._secret is not None:
            headers["X-Middleware-Secret"] = self._secret
        if signature:
            headers["x-ghl-signature"] = signature
        response = await self.http.request(
            "POST",
            FORWARD_PATH,
            "ghl.webhook.forward",
            content=body,
            headers=headers,
            ok=(200, 201, 202, 204),
            passthrough=tuple(range(400, 500)),
        )
        return response.status_code

    async def send_message(self, to: str, body: str, correlation_id: str) -> str:
        """V1: Verity's message id. Every failure carries its cause: Verity's refusal (4xx,
        a 401/403 as ``Misconfigured``: the key is not Verity's), its 429/5xx (``RetryLater``),
        the transport's; a 2xx without a message id is ``OutcomeUnknown`` (it was accepted,
        so presumably sent, but we cannot say which message it is)."""
        response = await self.http.request(
            "POST",
            SEND_PATH,
            "send-message",
            json={"to": to, "body": body, "correlationId": correlation_id},
            headers={"Authorization": f"Bearer {self._api_key.get_secret_value() if self._api_key else ''}"},
            ok=(200, 201),
            passthrough=tuple(range(400, 600)),
        )
        code = response.status_code
        if code >= 400:
            answer = parse_body(response)
            message = f"Verity API error: {code} {answer.get('error') if isinstance(answer, dict) else answer}"
            cause = status_cause(code)
            if code >= 500 or code in (408, 429):
                raise RetryLater(None, message, status=code, cause=cause)
            refused = Misconfigured if cause is Cause.UNAUTHORIZED else Permanent
            raise refused(message, status=code, cause=cause)
        try:
            data = response.json()
            verity_id = data.get("messageId") or data.get("id")
        except (ValueError, AttributeError):
            verity_id = None
        if not verity_id:
            raise OutcomeUnknown(f"Verity answered {code} without a messageId", cause=Cause.SERVER_ERROR)
        return str(verity_id)


class VerityLeads:
    """Verity's database (spec/outbound.md §2.4 V4) for AP-2/AP-3: contacts, leads and the
    broadcasts that reached a contact."""

    def __init__(self, database: VerityDatabase) -> None:
        self._database = database

    async def aclose(self) -> None:
        await self._database.aclose()

    async def find_contact(self, phone: str | None, email: str | None) -> str | None:
        pool = await self._database.pool()
        async with pool.acquire() as verity:
            found = (
                await verity.fetchval("SELECT id FROM contacts WHERE phone_e164 = $1 ORDER BY id LIMIT 1", phone)
                if phone
                else None
            )
            if found is None and email:
                found = await verity.fetchval(
                    "SELECT id FROM contacts WHERE lower(email) = lower($1) ORDER BY id LIMIT 1", email
                )
        return None if found is None else str(found)

    async def link_lead(self, contact_id: str, appointment_id: str | None) -> None:
        """The most recent lead (locked while it changes), or a new one."""
        pool = await self._database.pool()
        async with pool.acquire() as verity, verity.transaction():
            lead = await verity.fetchval(
                "SELECT id FROM leads WHERE contact_id = $1 ORDER BY coalesce(last_activity_at, created_at) "
                "DESC, id DESC LIMIT 1 FOR UPDATE",
                contact_id,
            )
            if lead is None:
                await verity.execute(
                    "INSERT INTO leads (contact_id, ghl_appointment_id, created_at, "
                    "last_activity_at) VALUES ($1, $2, now(), now())",
                    contact_id,
                    appointment_id,
                )
            else:
                await verity.execute(
                    "UPDATE leads SET ghl_appointment_id = $2, last_activity_at = now() WHERE id = $1",
                    lead,
                    appointment_id,
                )

    async def reached_broadcasts(self, contact_id: str) -> list[str]:
        pool = await self._database.pool()
        async with pool.acquire() as verity:
            rows = await verity.fetch(
                "SELECT DISTINCT broadcast_id FROM broadcast_recipient WHERE contact_id = $1 "
                "AND status = ANY($2) ORDER BY broadcast_id",
                contact_id,
                list(REACHED),
            )
        return [str(r["broadcast_id"]) for r in rows]


# what a failing Verity database raises: the server's error, or the socket's when it is away
VERITY_DB_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, OSError)


class GhlLookups:
    """AP-1's questions to GHL: an appointment's contact, a duplicate by phone or e-mail, a
    contact's reach."""

    def __init__(self, ghl: GhlClient) -> None:
        self._ghl = ghl

    async def appointment_contact(self, appointment_id: str) -> str | None:
        return await self._ghl.appointment_contact(appointment_id)

    async def duplicate(self, *, phone: str | None, email: str | None) -> str | None:
        return await self._ghl.find_duplicate(phone=phone) if phone else await self._ghl.find_duplicate(email=email)

    async def reach(self, contact_id: str) -> Reach | None:
        contact = await self._ghl.get_contact(contact_id)
        return None if contact is None else Reach(contact.phone, contact.email)


class StatusReports:
    """G14: what became of an agent's message, told to GHL (nothing when the conversation
    provider is not configured: logged)."""

    def __init__(self, conversations: GhlConversations | None) -> None:
        self._conversations = conversations

    async def report(self, ghl_message_id: str, status: str, error: dict[str, str] | None) -> None:
        if self._conversations is None:
            log.warning("ghl_status_not_reported", reason="conversations not configured", status=status)
            return
        await self._conversations.update_status(ghl_message_id, status, error)


class AnalyticsEvents:
    """AP-3's ``analytics_updated`` events onto the WEBHOOKS stream, like accepted webhooks
    (one connection, opened on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nc: Any = None

    async def aclose(self) -> None:
        if self._nc is not None:
            await self._nc.drain()
            self._nc = None

    async def publish(self, broadcast_id: str, appointment_id: str, ghl_contact_id: str) -> None:
        if self._nc is None:
            self._nc = await connect(self._settings, name="dfm-verity-sync-ap")
        event = WebhookEvent(
            source=Source.BROADCAST,
            event_name="analytics_updated",
            event_type="analytics_updated",
            canonical_type="broadcast.analytics",
            entity_type=EntityType.BROADCAST,
            entity_id=broadcast_id,
            dedupe_key=f"broadcast:{broadcast_id}:analytics_updated:appt:{appointment_id}",
            auth=AuthInfo(method="internal", verified=True),
            payload={
                "broadcastId": broadcast_id,
                "eventType": "analytics_updated",
                "triggeredBy": "ghl_appointment",
                "appointmentId": appointment_id,
                "contactId": ghl_contact_id,
            },
        )
        await self._nc.jetstream().publish(
            event.subject, event.to_bytes(), headers=event.nats_headers(), timeout=self._settings.dfm_publish_timeout
        )
