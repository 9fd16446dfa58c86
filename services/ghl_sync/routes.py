"""The dispatch table of ghl-sync (spec/outbound.md §1.1): which rule plans an event, by its
source and canonical type, and the filter subject that delivers it
(``contracts.streams.GHL_SYNC_FILTERS``, split between the real-time durable ``ghl-sync`` and
the bulk one ``ghl-sync-bulk`` by ``DFM_BULK_SUBJECTS``, issue #18). ``GhlSync.handle`` runs
the plan; ``explain`` prints it.

Each entry's planner reads the payload into its contract model (an invalid payload is
``Permanent``) and returns the rule's plan (``rules/ops.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from contracts.envelope import WebhookEvent
from contracts.payloads.aloware import AlowareContactEvent
from contracts.payloads.broadcast import BroadcastEvent
from contracts.payloads.texting import normalise_texting
from services.domain.rules import RuleContext
from services.ghl_sync.rules.broadcasts import plan_broadcast_analytics
from services.ghl_sync.rules.calls import (
    CALL_TYPES,
    KIND_OF_CANONICAL,
    artifact,
    parse_call,
    parse_disposition,
    plan_artifact,
    plan_call,
    plan_disposition,
)
from services.ghl_sync.rules.contact import plan_aloware_contact
from services.ghl_sync.rules.messages import parse_texting, plan_message, plan_message_status
from services.ghl_sync.rules.ops import Done, EventRef, Plan
from services.ghl_sync.rules.optouts import parse_dnc_update, plan_dnc_update, plan_texting_optout
from services.infra.errors import Permanent

__all__ = ["ROUTES", "Route", "event_ref", "route_for"]

Planner = Callable[[WebhookEvent, RuleContext], Plan]


def event_ref(event: WebhookEvent) -> EventRef:
    return EventRef(event.dedupe_key, event.received_at, event.entity_id)


def _invalid(what: str, exc: ValidationError) -> Permanent:
    return Permanent(f"invalid {what} payload: {exc.errors()[0]['msg']}")


def _aloware_contact(event: WebhookEvent, ctx: RuleContext) -> Plan:
    try:
        body = AlowareContactEvent.model_validate(event.payload).body
    except ValidationError as exc:
        raise _invalid("Aloware contact", exc) from None
    return plan_aloware_contact(body, event_ref(event), ctx)


def _call(event: WebhookEvent, ctx: RuleContext) -> Plan:
    call = parse_call(event.payload, event.received_at)
    if call is None:
        raise Permanent("No call id in call payload")
    return plan_call(call, ctx)


def _artifact(event: WebhookEvent, ctx: RuleContext) -> Plan:
    kind = KIND_OF_CANONICAL[event.canonical_type]
    found = artifact(kind, event.canonical_type, event.payload, event.received_at)
    return plan_artifact(found, event_ref(event), ctx)


def _disposition(event: WebhookEvent, ctx: RuleContext) -> Plan:
    return plan_disposition(parse_disposition(event.payload), ctx)


def _dnc(event: WebhookEvent, ctx: RuleContext) -> Plan:
    return plan_dnc_update(parse_dnc_update(event.payload), event_ref(event), ctx)


def _appointment(event: WebhookEvent, ctx: RuleContext) -> Plan:
    """Aloware appointments: GHL is their source of truth; nothing is written."""
    return Done("skipped", "appointments_sot_is_ghl")
    yield  # a plan without operations


def _texting_optout(event: WebhookEvent, ctx: RuleContext) -> Plan:
    return plan_texting_optout(normalise_texting(event.payload), event_ref(event), ctx)


def _message(event: WebhookEvent, ctx: RuleContext) -> Plan:
    return plan_message(parse_texting(event.payload), event.canonical_type, event_ref(event), ctx)


def _message_status(event: WebhookEvent, ctx: RuleContext) -> Plan:
    return plan_message_status(parse_texting(event.payload), ctx)


def _broadcast(event: WebhookEvent, ctx: RuleContext) -> Plan:
    try:
        broadcast = BroadcastEvent.model_validate(event.payload)
    except ValidationError as exc:
        raise _invalid("broadcast", exc) from None
    return plan_broadcast_analytics(broadcast, event_ref(event), ctx)


@dataclass(frozen=True)
class Route:
    """Events of ``source`` with one of ``canonical_types``, delivered on ``subject`` (one of
    ``GHL_SYNC_FILTERS``, which ghl-sync's two lane durables split), are planned by ``plan``
    (rule ``rule``)."""

    subject: str
    source: str
    canonical_types: tuple[str, ...]
    rule: str
    plan: Planner


ROUTES: tuple[Route, ...] = (
    Route("webhooks.aloware.contact.>", "aloware", ("contact.created", "contact.updated"), "CA", _aloware_contact),
    Route("webhooks.aloware.contact.>", "aloware", ("contact.disposed",), "D-2", _disposition),
    Route("webhooks.aloware.contact.>", "aloware", ("contact.dnc_updated",), "D-1", _dnc),
    Route("webhooks.aloware.call.>", "aloware", CALL_TYPES, "CL", _call),
    Route("webhooks.aloware.transcription.>", "aloware", ("call.transcription_saved",), "AR", _artifact),
    Route("webhooks.aloware.call_summary.>", "aloware", ("call.summarized",), "AR", _artifact),
    Route("webhooks.aloware.recording.>", "aloware", ("call.recording_saved",), "AR", _artifact),
    Route("webhooks.aloware.voicemail.>", "aloware", ("call.voicemail_saved",), "AR", _artifact),
    Route(
        "webhooks.aloware.communication.>",
        "aloware",
        ("communication.initiated", "communication.disposed"),
        "AR",
        _artifact,
    ),
    Route("webhooks.aloware.appointment.>", "aloware", ("appointment.saved",), "CA", _appointment),
    Route("webhooks.texting.optout.optout_stop", "texting", ("optout.stop",), "O-2", _texting_optout),
    Route("webhooks.texting.message.>", "texting", ("message.inbound", "message.outbound"), "M-1", _message),
    Route("webhooks.texting.message.>", "texting", ("message.status",), "M-4", _message_status),
    Route("webhooks.broadcast.>", "broadcast", ("broadcast.analytics",), "B", _broadcast),
)
_BY_TYPE = {(r.source, kind): r for r in ROUTES for kind in r.canonical_types}


def route_for(event: WebhookEvent) -> Route | None:
    """The route of an event, None when no ghl-sync rule handles its type."""
    return _BY_TYPE.get((event.source.value, event.canonical_type))
