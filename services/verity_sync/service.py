"""verity-sync: rules whose write target is Verity (spec/outbound.md §1.8 M-2, §1.16 F-1).

* F-1 — every webhook GHL sent us (W1) is forwarded to Verity with the raw body bytes and
  GHL's signature header, so Verity can verify it as if GHL had called it.
* M-2 — an SMS a GHL agent sends (conversation-provider delivery) goes out through Verity's
  send-message API at most once: the effect claim ``m2:<GHL messageId>`` is inserted before
  the send and only the attempt that inserted it sends (``services/domain/effects.py``);
  another delivery running at the same time waits for it. A send Verity refused (4xx, 429,
  503, no connection) releases the claim and is retried; one that may have gone out
  (timeout, connection lost after the request, other 5xx) leaves the claim ``unknown`` and
  the event ``dead`` with ``outcome_unknown: …`` — never resent automatically, because a
  second SMS to a person cannot be taken back, and Verity has no lookup by correlationId.
  The ``message_mappings`` row (echo suppression, M-4) is written once the send is known.
  Opted-out numbers are never sent to (O-5a) and GHL is told the message failed.
  Attachments: Verity's send-message API takes text only (spec/outbound.md §2.4 V1: ``to``,
  ``body``, ``from``, ``conversationId``, ``correlationId``), so an agent's MMS goes out as
  its text and the event and ``sync_log`` say ``attachments_dropped``; one with no text at
  all has nothing Verity could send: it ends ``done`` (skipped, ``attachments_dropped``) and
  GHL is told it failed, instead of ending ``dead`` as an invalid message.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import WebhookEvent
from contracts.payloads.provider import ProviderOutboundMessage
from contracts.phone import to_e164
from services.clients.ghl import GhlClient
from services.clients.ghl_conversations import GhlConversations
from services.clients.http import VendorHttp, parse_body
from services.domain import effects, optout, store
from services.infra.db.models import MessageMappingRow, SyncLogRow
from services.infra.delivery import Outcome
from services.infra.errors import OutcomeUnknown, Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.verity_sync.appointments import AppointmentRules

log = get_logger(__name__)
FORWARD_PATH = "/api/integrations/ghl/webhook"
SEND_PATH = "/api/integrations/df-middleware/send-message"
SEND_EFFECT = "verity.send_message"
# 503 says the server did not take the request (RFC 9110 §15.6.4): safe to send again
REFUSED_5XX = frozenset({503})
ATTACHMENTS_DROPPED = "attachments_dropped"


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
        self.forward_secret = forward_secret(settings)
        if settings.verity_forward_secret is None and self.forward_secret is not None:
            log.warning("verity_forward_uses_the_inbound_secret",
                        hint="set VERITY_FORWARD_SECRET; production sends no secret without it")
        elif self.forward_secret is None and settings.verity_base_url:
            log.warning("verity_forward_without_secret", hint="set VERITY_FORWARD_SECRET")

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
            forwarded = await conn.scalar(select(SyncLogRow.id).where(
                SyncLogRow.rule == "F-1", SyncLogRow.status == "success", SyncLogRow.correlation_id == str(event.event_id))
                .limit(1))
        if forwarded is not None:  # a replay: Verity has this webhook already
            return Outcome("skipped", "already_forwarded")
        headers = {"Content-Type": "application/json", "X-Middleware-Forwarded": "true"}
        if self.forward_secret is not None:
            headers["X-Middleware-Secret"] = self.forward_secret
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
        if phone and sms.attachments and not (sms.message or "").strip():
            return await self._attachments_only(sms, common)
        if not phone or not sms.message:
            raise Permanent("provider message without phone or message text")
        key = f"m2:{sms.message_id}"  # GHL's message id: the same on every delivery of this send
        async with self.engine.begin() as conn:
            held = await effects.claim(conn, key, SEND_EFFECT, event_id=event.event_id,
                                       ttl_s=self.settings.dfm_effect_claim_ttl_s)
            opted_out = isinstance(held, effects.Claim) and await optout.is_opted_out(conn, phone)
            if opted_out:  # nothing is sent: the claim goes with this transaction's commit
                assert isinstance(held, effects.Claim)
                await effects.release(conn, held)
                await store.log_sync(conn, status="skipped", rule="M-2", message="recipient_opted_out", **common)
        if opted_out:
            await self._report(sms.message_id, "failed", {"code": "opted_out", "type": "saas",
                                                          "message": "Recipient has opted out of SMS"})
            return Outcome("skipped", "recipient_opted_out")
        if isinstance(held, effects.Settled):
            if held.state == "done":
                return Outcome("skipped", "already_sent")
            raise OutcomeUnknown(f"send-message for correlationId {sms.message_id} ({held.detail}); "
                                 "check Verity, then resolve the claim " + key)
        if held.recovered:  # an attempt died holding the claim; Verity has no lookup to ask
            await self._settle_unknown(key, "an attempt died after claiming the send")
            raise OutcomeUnknown(f"send-message for correlationId {sms.message_id} was interrupted; "
                                 "check Verity, then resolve the claim " + key)
        verity_id = await self._send(phone, sms, held)
        details = {ATTACHMENTS_DROPPED: len(sms.attachments)} if sms.attachments else None
        note = ATTACHMENTS_DROPPED if sms.attachments else None
        async with self.engine.begin() as conn:
            await effects.done(conn, key, verity_id)
            now = datetime.now(UTC)
            values = {"verity_message_id": verity_id, "correlation_id": sms.message_id,
                      "ghl_contact_id": sms.contact_id, "to_number": phone, "body_sha256":
                      hashlib.sha256(sms.message.strip().encode()).hexdigest(), "direction": "outbound",
                      "ghl_sync_status": "synced", "updated_at": now}
            await conn.execute(pg_insert(MessageMappingRow).values(ghl_message_id=sms.message_id, **values)
                               .on_conflict_do_update(index_elements=["ghl_message_id"], set_=values))
            await store.log_sync(conn, status="success", rule="M-2", target_id=verity_id, message=note,
                                 details=details, **common)
        return Outcome("applied", note)

    async def _attachments_only(self, sms: ProviderOutboundMessage, common: dict[str, Any]) -> Outcome:
        """An agent's MMS with no text: nothing Verity's API could send, and a retry cannot
        change that. GHL is told first (a failed report retries the event before anything is
        logged), so the agent's message does not stay pending for ever."""
        await self._report(sms.message_id, "failed", {
            "code": "attachments_not_supported", "type": "saas",
            "message": "Attachments cannot be sent through this SMS provider; nothing was sent"})
        async with self.engine.begin() as conn:
            await store.log_sync(conn, status="skipped", rule="M-2", message=ATTACHMENTS_DROPPED,
                                 details={ATTACHMENTS_DROPPED: len(sms.attachments)}, **common)
        return Outcome("skipped", ATTACHMENTS_DROPPED)

    async def _send(self, phone: str, sms: ProviderOutboundMessage, held: effects.Claim) -> str:
        """V1, by the attempt holding the claim. A refusal (4xx, 429, 503, no connection)
        releases the claim and the usual retry applies; anything after which Verity may have
        sent the SMS (timeout, connection lost mid-way, other 5xx, an unreadable 200) marks
        it ``unknown`` and ends the delivery: a second SMS to a person cannot be taken back."""
        key = self.settings.verity_api_key
        if not key or not self.settings.verity_base_url:
            await self._release(held)
            raise Permanent("VERITY_API_KEY / VERITY_BASE_URL are not set")
        try:
            response = await self.http.request(
                "POST", SEND_PATH, "send-message", json={"to": phone, "body": sms.message,
                                                         "correlationId": sms.message_id},
                headers={"Authorization": f"Bearer {key.get_secret_value()}"}, ok=(200, 201),
                passthrough=tuple(range(400, 600)))
        except RetryLater as exc:
            if effects.may_have_landed(exc):
                await self._settle_unknown(held.key, exc.reason)
                raise OutcomeUnknown(f"send-message {exc.reason} (correlationId {sms.message_id})") from None
            await self._release(held)
            raise
        code = response.status_code
        if code >= 400:
            body = parse_body(response)
            message = f"Verity API error: {code} {body.get('error') if isinstance(body, dict) else body}"
            if code >= 500 and code not in REFUSED_5XX:
                await self._settle_unknown(held.key, message)
                raise OutcomeUnknown(f"{message} (correlationId {sms.message_id})")
            await self._release(held)
            if code >= 500 or code in (408, 429):
                raise RetryLater(None, message)
            raise Permanent(message)
        try:
            data = response.json()
            verity_id = data.get("messageId") or data.get("id")
        except (ValueError, AttributeError):
            verity_id = None
        if not verity_id:  # accepted, so presumably sent, but we cannot say which message it is
            await self._settle_unknown(held.key, f"Verity answered {code} without a messageId")
            raise OutcomeUnknown(f"Verity answered {code} without a messageId (correlationId {sms.message_id})")
        return str(verity_id)

    async def _release(self, held: effects.Claim) -> None:
        async with self.engine.begin() as conn:
            await effects.release(conn, held)

    async def _settle_unknown(self, key: str, detail: str) -> None:
        async with self.engine.begin() as conn:
            await effects.unknown(conn, key, detail)

    async def _report(self, ghl_message_id: str, status: str, error: dict[str, str] | None) -> None:
        if self.conversations is None:
            log.warning("ghl_status_not_reported", reason="conversations not configured", status=status)
            return
        await self.conversations.update_status(ghl_message_id, status, error)


__all__ = ["VeritySync"]
