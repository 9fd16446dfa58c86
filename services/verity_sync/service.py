"""verity-sync: rules whose write target is Verity (spec/outbound.md §1.8 M-2, §1.16 F-1).

* F-1 — every webhook GHL sent us (W1) is forwarded to Verity with the raw body bytes and
  GHL's signature header, so Verity can verify it as if GHL had called it.
* M-2 — an SMS a GHL agent sends (conversation-provider delivery) goes out through Verity's
  send-message API exactly once: the ``message_mappings`` row keyed by the GHL message id is
  claimed before the send. A send that failed cleanly (refused, 5xx) releases the claim and
  is retried; a send whose outcome is unknown (timeout) is never repeated automatically —
  the event ends ``dead`` for an operator to check, because a second SMS to a person cannot
  be taken back. Opted-out numbers are never sent to (O-5a) and GHL is told the message failed.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.provider import ProviderOutboundMessage
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.http import VendorHttp, parse_body
from services.common import optout
from services.common.db.models import MessageMapping, SyncLog
from services.common.delivery import Outcome
from services.common.errors import Permanent, RetryLater
from services.common.logging import get_logger
from services.common.phone import to_e164
from services.common.settings import Settings
from services.common.sync import store
from services.verity_sync.appointments import AppointmentRules

log = get_logger(__name__)
FORWARD_PATH = "/api/integrations/ghl/webhook"
SEND_PATH = "/api/integrations/df-middleware/send-message"


class VeritySync:
    """Dispatches events to Verity-writing rules."""

    def __init__(self, settings: Settings, engine: AsyncEngine, conversations: GhlConversations | None,
                 http: VendorHttp | None = None, ghl: GhlClient | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.conversations = conversations
        base = settings.verity_base_url or "http://localhost:3000"
        self.http = http or VendorHttp("verity", base)
        self.appointments = AppointmentRules(settings, engine, ghl)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.appointments.aclose()

    async def handle(self, event: WebhookEvent, attempt: int) -> Outcome:
        if event.source.value == "ghl_provider":
            if event.canonical_type == "provider_outbound_sms":
                return await self.send_sms(event, attempt)
            return Outcome("skipped", f"Unhandled provider message type: {event.event_name}")
        if event.source.value == "ghl":
            forwarded = await self.forward(event, attempt)
            if event.canonical_type in ("appointment.created", "appointment.updated"):
                linked = await self.appointments.link(event, attempt)
                return linked if linked.outcome == "applied" else forwarded
            return forwarded
        return Outcome("skipped", f"Unhandled event type: {event.event_name}")

    # --- F-1 -------------------------------------------------------------------------------
    async def forward(self, event: WebhookEvent, attempt: int) -> Outcome:
        common = {"direction": "ghl_to_verity", "entity_type": event.entity_type.value,
                  "source_id": event.entity_id or "unknown", "started_at": datetime.now(UTC),
                  "correlation_id": str(event.event_id), "attempt": attempt}
        if not self.settings.verity_base_url:
            return Outcome("skipped", "verity_not_configured")
        if event.payload.get("dfmReconciled") or event.payload_raw_b64 is None:
            return Outcome("skipped", "not_a_ghl_delivery")  # rebuilt by reconciliation: GHL never sent it
        async with self.engine.connect() as conn:
            forwarded = await conn.scalar(select(SyncLog.id).where(
                SyncLog.rule == "F-1", SyncLog.status == "success", SyncLog.correlation_id == str(event.event_id))
                .limit(1))
        if forwarded is not None:  # a replay: Verity has this webhook already
            return Outcome("skipped", "already_forwarded")
        headers = {"Content-Type": "application/json", "X-Middleware-Forwarded": "true"}
        if self.settings.verity_webhook_secret:
            headers["X-Middleware-Secret"] = self.settings.verity_webhook_secret[0].get_secret_value()
        if event.forward_signature:
            headers["x-ghl-signature"] = event.forward_signature
        response = await self.http.request("POST", FORWARD_PATH, "ghl.webhook.forward",
                                           content=base64.b64decode(event.payload_raw_b64), headers=headers,
                                           ok=(200, 201, 202, 204), passthrough=tuple(range(400, 500)))
        async with self.engine.begin() as conn:
            if response.status_code >= 400:
                message = f"verity {response.status_code} at ghl.webhook.forward"
                await store.log_sync(conn, status="error", rule="F-1", message=message, **common)
                raise Permanent(message)
            await store.log_sync(conn, status="success", rule="F-1", **common)
        return Outcome("applied")

    # --- M-2 -------------------------------------------------------------------------------
    async def send_sms(self, event: WebhookEvent, attempt: int) -> Outcome:
        try:
            sms = ProviderOutboundMessage.model_validate(event.payload)
        except ValidationError as exc:
            raise Permanent(f"invalid provider message: {exc.errors()[0]['msg']}") from None
        common = {"direction": "ghl_to_texting", "entity_type": "message", "source_id": sms.message_id,
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        phone = to_e164(sms.phone, self.settings.default_phone_region)
        if not phone or not sms.message:
            raise Permanent("provider message without phone or message text")
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(MessageMapping).where(
                MessageMapping.ghl_message_id == sms.message_id))).first()
            if row is not None and row.verity_message_id:
                return Outcome("skipped", "already_sent")
            if row is not None and row.ghl_sync_status is None:
                raise Permanent(
                    f"send outcome unknown after an interrupted attempt (correlationId {sms.message_id}); "
                    "check Verity before marking done or replaying")
            if await optout.is_opted_out(conn, phone):
                await store.log_sync(conn, status="skipped", rule="M-2", message="recipient_opted_out", **common)
                opted_out = True
            else:
                opted_out = False
                await conn.execute(pg_insert(MessageMapping).values(
                    ghl_message_id=sms.message_id, correlation_id=sms.message_id, ghl_contact_id=sms.contact_id,
                    to_number=phone, body_sha256=hashlib.sha256(sms.message.strip().encode()).hexdigest(),
                    direction="outbound").on_conflict_do_nothing(index_elements=["ghl_message_id"]))
        if opted_out:
            await self._report(sms.message_id, "failed", {"code": "opted_out", "type": "saas",
                                                          "message": "Recipient has opted out of SMS"})
            return Outcome("skipped", "recipient_opted_out")
        verity_id = await self._send(phone, sms)
        details = {"attachments_dropped": len(sms.attachments)} if sms.attachments else None
        async with self.engine.begin() as conn:
            await conn.execute(update(MessageMapping).where(MessageMapping.ghl_message_id == sms.message_id)
                               .values(verity_message_id=verity_id, ghl_sync_status="synced",
                                       updated_at=datetime.now(UTC)))
            await store.log_sync(conn, status="success", rule="M-2", target_id=verity_id, details=details, **common)
        return Outcome("applied")

    async def _send(self, phone: str, sms: ProviderOutboundMessage) -> str:
        """V1. A clean failure releases the claim (retry is safe); a timeout keeps it."""
        key = self.settings.verity_api_key
        if not key or not self.settings.verity_base_url:
            await self._release(sms.message_id)
            raise Permanent("VERITY_API_KEY / VERITY_BASE_URL are not set")
        try:
            response = await self.http.request(
                "POST", SEND_PATH, "send-message", json={"to": phone, "body": sms.message,
                                                         "correlationId": sms.message_id},
                headers={"Authorization": f"Bearer {key.get_secret_value()}"}, ok=(200, 201),
                passthrough=tuple(range(400, 600)))
        except RetryLater as exc:
            if "timeout" in exc.reason:
                raise Permanent(f"send-message timed out; outcome unknown (correlationId {sms.message_id})") from None
            await self._release(sms.message_id)
            raise
        if response.status_code >= 400:
            await self._release(sms.message_id)
            body = parse_body(response)
            message = f"Verity API error: {response.status_code} {body.get('error') if isinstance(body, dict) else body}"
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise RetryLater(None, message)
            raise Permanent(message)
        data = response.json()
        verity_id = data.get("messageId") or data.get("id")
        if not verity_id:
            raise Permanent("No messageId in response")
        return str(verity_id)

    async def _release(self, ghl_message_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(MessageMapping).where(MessageMapping.ghl_message_id == ghl_message_id,
                                                            MessageMapping.verity_message_id.is_(None)))

    async def _report(self, ghl_message_id: str, status: str, error: dict[str, str] | None) -> None:
        if self.conversations is None:
            log.warning("ghl_status_not_reported", reason="conversations not configured", status=status)
            return
        await self.conversations.update_status(ghl_message_id, status, error)


__all__ = ["VeritySync"]
