"""GHL appointments → Verity (spec/outbound.md §1.13, rules AP-1…AP-4).

The appointment id is written onto the Verity lead of the contact (the most recent lead,
created when there is none), then every broadcast that reached the contact gets an
``analytics_updated`` event so its figures include the new appointment (dedupe key
``broadcast:<id>:analytics_updated:appt:<appointment id>``, so a replay does not multiply
the work). Failures in these steps are logged and do not fail the event (AP-4).

The contact is the one the webhook names, else the appointment's at GHL, else the one GHL's
duplicate search finds by the payload's phone, then e-mail (AP-1): workflow webhooks often
carry only those. Its phone and e-mail come from our mapping, else from GHL; when GHL has no
such contact either, the payload's own phone and e-mail find the Verity contact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import AuthInfo, WebhookEvent
from contracts.phone import to_e164
from contracts.subjects import EntityType, Source
from services.clients.ghl import GhlClient
from services.domain import store
from services.infra.broker import connect
from services.infra.delivery import Outcome
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.verity_db import VerityDatabase

log = get_logger(__name__)
REACHED = ("sent", "delivered", "opened", "clicked")


def _dig(payload: dict[str, Any], *paths: str) -> str | None:
    for path in paths:
        value: Any = payload
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (str, int)) and str(value):
            return str(value)
    return None


def payload_reach(event: WebhookEvent) -> tuple[str | None, str | None]:
    """AP-1: the phone and e-mail the appointment webhook itself carries (workflow bodies)."""
    p = event.payload
    phone = _dig(p, "phone", "contact.phone", "appointment.phone", "body.phone", "data.phone")
    email = _dig(p, "email", "contact.email", "appointment.email", "body.email", "data.email")
    return phone, email


def appointment_ids(event: WebhookEvent) -> tuple[str | None, str | None]:
    """AP-1: (appointment id, contact id) from the many shapes GHL sends."""
    p = event.payload
    appointment = event.entity_id or _dig(p, "id", "appointmentId", "appointment.id")
    contact = _dig(p, "contactId", "contact_id", "contact.id", "contact.contactId", "appointment.contactId",
                   "body.contactId", "data.contactId")
    return appointment, contact


class AppointmentRules:
    def __init__(self, settings: Settings, engine: AsyncEngine, ghl: GhlClient | None) -> None:
        self.settings = settings
        self.engine = engine
        self.ghl = ghl
        self.verity_db = VerityDatabase(self.settings)
        self._nc: Any = None

    async def aclose(self) -> None:
        await self.verity_db.aclose()
        if self._nc is not None:
            await self._nc.drain()

    async def link(self, event: WebhookEvent, attempt: int) -> Outcome:
        common = {"direction": "ghl_to_verity", "entity_type": "appointment", "source_id": event.entity_id or "?",
                  "started_at": datetime.now(UTC), "correlation_id": str(event.event_id), "attempt": attempt}
        if not self.settings.verity_database_url:
            return Outcome("skipped", "verity_database_not_configured")
        appointment_id, contact_id = appointment_ids(event)
        try:
            contact_id, phone, email = await self._contact(event, contact_id, appointment_id)
            pool = await self.verity_db.pool()
            async with pool.acquire() as verity:
                verity_contact = await verity.fetchval(
                    "SELECT id FROM contacts WHERE phone_e164 = $1 ORDER BY id LIMIT 1", phone) if phone else None
                if verity_contact is None and email:
                    verity_contact = await verity.fetchval(
                        "SELECT id FROM contacts WHERE lower(email) = lower($1) ORDER BY id LIMIT 1", email)
                if verity_contact is None:
                    async with self.engine.begin() as conn:
                        await store.log_sync(conn, status="skipped", rule="AP-2", message="verity_contact_not_found",
                                             **common)
                    return Outcome("skipped", "verity_contact_not_found")
                async with verity.transaction():
                    lead = await verity.fetchval(
                        "SELECT id FROM leads WHERE contact_id = $1 ORDER BY coalesce(last_activity_at, created_at) "
                        "DESC, id DESC LIMIT 1 FOR UPDATE", verity_contact)
                    if lead is None:
                        await verity.execute("INSERT INTO leads (contact_id, ghl_appointment_id, created_at, "
                                             "last_activity_at) VALUES ($1, $2, now(), now())",
                                             verity_contact, appointment_id)
                    else:
                        await verity.execute("UPDATE leads SET ghl_appointment_id = $2, last_activity_at = now() "
                                             "WHERE id = $1", lead, appointment_id)
                broadcasts = [r["broadcast_id"] for r in await verity.fetch(
                    "SELECT DISTINCT broadcast_id FROM broadcast_recipient WHERE contact_id = $1 "
                    "AND status = ANY($2) ORDER BY broadcast_id", verity_contact, list(REACHED))]
            for broadcast_id in broadcasts:
                await self._recalculate(broadcast_id, appointment_id or "?", contact_id or "?")
        except (asyncpg.PostgresError, OSError, Permanent, RetryLater) as exc:  # AP-4: logged, not failed
            if isinstance(exc, RetryLater) and not exc.counts_as_attempt:
                raise  # our own GHL budget (burst or daily quota) is empty: wait for it, lose nothing
            log.warning("appointment_link_failed", error=str(exc), appointment_id=appointment_id)
            async with self.engine.begin() as conn:
                await store.log_sync(conn, status="error", rule="AP", message=str(exc)[:500], **common)
            return Outcome("skipped", f"appointment_link_failed: {type(exc).__name__}")
        async with self.engine.begin() as conn:
            await store.log_sync(conn, status="success", rule="AP", target_id=str(verity_contact),
                                 details={"broadcasts": broadcasts}, **common)
        return Outcome("applied")

    async def _contact(self, event: WebhookEvent, contact_id: str | None, appointment_id: str | None
                       ) -> tuple[str | None, str | None, str | None]:
        """AP-1/AP-2: (GHL contact id, phone, e-mail). The contact is the webhook's, else the
        appointment's at GHL, else GHL's duplicate by the payload's phone, then e-mail; its
        phone and e-mail from our mapping, else from GHL, else the payload's own."""
        phone, email = payload_reach(event)
        phone = to_e164(phone, self.settings.default_phone_region) if phone else None
        if contact_id is None and appointment_id and self.ghl is not None:
            contact_id = await self.ghl.appointment_contact(appointment_id)
        if contact_id is None and self.ghl is not None:
            contact_id = await self.ghl.find_duplicate(phone=phone) if phone else None
            if contact_id is None and email:
                contact_id = await self.ghl.find_duplicate(email=email)
        if contact_id is None:
            if phone or email:  # GHL does not know them: the appointment's own details
                return None, phone, email
            raise Permanent("no contact id, phone or e-mail in the appointment")
        async with self.engine.connect() as conn:
            mapping = await store.mapping_by_ghl(conn, contact_id)
        if mapping is not None and (mapping.phone_number or mapping.email):
            return contact_id, mapping.phone_number, mapping.email
        contact = await self.ghl.get_contact(contact_id) if self.ghl is not None else None
        if contact is None:
            return contact_id, phone, email
        return contact_id, to_e164(contact.phone, self.settings.default_phone_region), contact.email

    async def _recalculate(self, broadcast_id: str, appointment_id: str, contact_id: str) -> None:
        """AP-3: an analytics event for the broadcast, published like an accepted webhook."""
        if self._nc is None:
            self._nc = await connect(self.settings, name="dfm-verity-sync-ap")
        event = WebhookEvent(
            source=Source.BROADCAST, event_name="analytics_updated", event_type="analytics_updated",
            canonical_type="broadcast.analytics", entity_type=EntityType.BROADCAST, entity_id=broadcast_id,
            dedupe_key=f"broadcast:{broadcast_id}:analytics_updated:appt:{appointment_id}",
            auth=AuthInfo(method="internal", verified=True),
            payload={"broadcastId": broadcast_id, "eventType": "analytics_updated",
                     "triggeredBy": "ghl_appointment", "appointmentId": appointment_id, "contactId": contact_id})
        await self._nc.jetstream().publish(event.subject, event.to_bytes(), headers=event.nats_headers(),
                                           timeout=self.settings.dfm_publish_timeout)
