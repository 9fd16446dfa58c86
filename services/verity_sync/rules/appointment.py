"""GHL appointments → Verity (spec/outbound.md §1.13, rules AP-1…AP-4).

The appointment id is written onto the Verity lead of the contact (the most recent lead,
created when there is none), then every broadcast that reached the contact gets an
``analytics_updated`` event so its figures include the new appointment (AP-3). Failures in
these steps are logged and do not fail the event (AP-4).

The contact is the one the webhook names, else the appointment's at GHL, else the one GHL's
duplicate search finds by the payload's phone, then e-mail (AP-1): workflow webhooks often
carry only those. Its phone and e-mail come from our mapping, else from GHL; when GHL has no
such contact either, the payload's own phone and e-mail find the Verity contact (AP-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.envelope import WebhookEvent
from contracts.phone import to_e164
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome
from services.verity_sync.rules.ops import (
    GHL_API,
    VERITY_DATABASE,
    FindAppointmentContact,
    FindGhlDuplicate,
    FindVerityContact,
    LinkLead,
    LogSync,
    Plan,
    PublishAnalyticsUpdate,
    Reach,
    ReachedBroadcasts,
    ReadGhlContact,
    ReadMapping,
    Step,
    StepFailed,
    SyncSubject,
)

LINKED = frozenset({"appointment.created", "appointment.updated"})


@dataclass(frozen=True)
class AppointmentRef:
    """AP-1: what an appointment webhook says, from the many shapes GHL sends (marketplace
    ``appointment.*``, workflow bodies, ``body.*`` / ``data.*`` wrappers)."""

    appointment_id: str | None
    ghl_contact_id: str | None
    phone: str | None
    email: str | None
    source_id: str  # the sync_log source id: the event's entity id


def _dig(payload: dict[str, Any], *paths: str) -> str | None:
    for path in paths:
        value: Any = payload
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (str, int)) and str(value):
            return str(value)
    return None


def appointment_ref(event: WebhookEvent) -> AppointmentRef:
    """AP-1: the appointment, contact, phone and e-mail the webhook itself carries."""
    p = event.payload
    return AppointmentRef(
        appointment_id=event.entity_id or _dig(p, "id", "appointmentId", "appointment.id"),
        ghl_contact_id=_dig(
            p,
            "contactId",
            "contact_id",
            "contact.id",
            "contact.contactId",
            "appointment.contactId",
            "body.contactId",
            "data.contactId",
        ),
        phone=_dig(p, "phone", "contact.phone", "appointment.phone", "body.phone", "data.phone"),
        email=_dig(p, "email", "contact.email", "appointment.email", "body.email", "data.email"),
        source_id=event.entity_id or "?",
    )


@dataclass(frozen=True)
class KnownAppointment:
    """What PostgreSQL says before any vendor is asked: our mapping's reach of the contact
    the webhook names (None: no contact named, or no mapping)."""

    mapping: Reach | None = None


def plan_appointment_link(ref: AppointmentRef, known: KnownAppointment, ctx: RuleContext) -> Plan:
    """AP-1…AP-4 for an ``appointment.created``/``appointment.updated`` event."""
    if not ctx.flag(VERITY_DATABASE):
        return Outcome("skipped", "verity_database_not_configured")
    subject = SyncSubject("ghl_to_verity", "appointment", ref.source_id)
    try:
        contact_id, reach = yield from _contact(ref, known, ctx)
        if contact_id is None and not (reach.phone or reach.email):
            raise StepFailed("Permanent", "no contact id, phone or e-mail in the appointment")
        verity_contact: str | None = yield FindVerityContact(reach.phone, reach.email)
        if verity_contact is None:
            yield LogSync("AP-2", "skipped", subject, "verity_contact_not_found")
            return Outcome("skipped", "verity_contact_not_found")
        yield LinkLead(verity_contact, ref.appointment_id)
        broadcasts: list[str] = yield ReachedBroadcasts(verity_contact)
        for broadcast_id in broadcasts:
            yield PublishAnalyticsUpdate(broadcast_id, ref.appointment_id or "?", contact_id or "?")
    except StepFailed as failed:  # AP-4: logged, not failed
        yield LogSync("AP", "error", subject, failed.detail[:500])
        return Outcome("skipped", f"appointment_link_failed: {failed.kind}")
    yield LogSync("AP", "success", subject, target_id=verity_contact, details={"broadcasts": broadcasts})
    return Outcome("applied")


def _contact(ref: AppointmentRef, known: KnownAppointment, ctx: RuleContext) -> Step[tuple[str | None, Reach]]:
    """AP-1/AP-2: (GHL contact id, how to reach the contact)."""
    phone = to_e164(ref.phone, ctx.region) if ref.phone else None
    payload = Reach(phone, ref.email)
    contact_id, mapping = ref.ghl_contact_id, known.mapping
    ask_ghl = ctx.flag(GHL_API)
    if contact_id is None and ref.appointment_id and ask_ghl:
        contact_id = yield FindAppointmentContact(ref.appointment_id)
    if contact_id is None and ask_ghl:
        contact_id = (yield FindGhlDuplicate(phone=phone)) if phone else None
        if contact_id is None and ref.email:
            contact_id = yield FindGhlDuplicate(email=ref.email)
    if contact_id is None:  # GHL does not know them: the appointment's own details
        return None, payload
    if contact_id != ref.ghl_contact_id:
        mapping = yield ReadMapping(contact_id)
    if mapping is not None and (mapping.phone or mapping.email):
        return contact_id, mapping
    contact: Reach | None = (yield ReadGhlContact(contact_id)) if ask_ghl else None
    if contact is None:
        return contact_id, payload
    return contact_id, Reach(to_e164(contact.phone, ctx.region), contact.email)
