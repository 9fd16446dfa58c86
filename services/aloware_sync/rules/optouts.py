"""Opt-outs as aloware-sync reads them (spec/outbound.md O-2, O-7, M-1.4, D-1), so that it can
take the number off the call lists at once (R3, ``rules/lists.py:plan_opt_out_removal``).

ghl-sync records STOP and Aloware DNC events in the opt-out registry; aloware-sync receives
the same events and records them too, before touching any list, so the registry says opted
out whichever consumer comes first (O-1 is idempotent per event). For that the phone,
source, reason and event time must be exactly those ghl-sync uses: the DNC flag and the event
time come from ``services/domain/optout.py`` (``dnc_flag``, ``event_time``), which both
consumers call; the rest follows ghl-sync's ``texting_optout``, ``dnc_updated`` and its
keyword reader, which a service may not import (STYLE.md §2).

O-7 (GHL DND → registry) is aloware-sync's own: GHL sends no other event for a DND change,
so the lists are cleaned now or never.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.envelope import WebhookEvent
from contracts.payloads.texting import normalise_texting
from contracts.phone import to_e164
from services.aloware_sync.rules.ops import Flow, LogSync, ReadGhlContact, RecordOptOut
from services.domain import optout
from services.domain.contact import ghl_to_canonical
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome

__all__ = ["DndChange", "OptOut", "aloware_dnc", "dnc_body", "plan_dnd_changed", "stop_keyword", "texting_stop"]


@dataclass(frozen=True)
class OptOut:
    """An opt-out of ``phone`` to record (unless ``record`` is False: already recorded) and
    act on. ``under_lock``: record it under the contact lock, as ghl-sync's M-1.4 does, so
    the two consumers' writes for one event are serialised the same way."""

    phone: str
    source: optout.Source
    reason: str
    at: datetime
    record: bool = True
    under_lock: bool = False


def texting_stop(event: WebhookEvent, region: str) -> OptOut | None:
    """O-2 ``optout.stop``: the number is ``from``, else ``to``; None without one."""
    msg = normalise_texting(event.payload)
    phone = to_e164(msg.from_number or msg.to_number, region)
    if not phone:
        return None
    return OptOut(phone, "texting", "STOP", optout.event_time(msg.timestamp, event.received_at))


def stop_keyword(event: WebhookEvent, region: str) -> OptOut | None:
    """M-1.4 / O-3: an inbound text that is exactly an opt-out word; None for any other text."""
    msg = normalise_texting(event.payload)
    direction = msg.direction or ("inbound" if event.canonical_type == "message.inbound" else "outbound")
    if direction != "inbound" or optout.keyword(msg.body) != "opt_out":
        return None
    phone = to_e164(msg.from_number, region)
    return OptOut(phone, "texting", "STOP", event.received_at, under_lock=True) if phone else None


def aloware_dnc(event: WebhookEvent, region: str) -> OptOut | None:
    """D-1 with the DNC flag set; None for a DNC removal (an opt-in changes no list) or a
    body without a phone."""
    payload = event.payload
    body = dnc_body(payload)
    phone = to_e164(body.get("phone_number"), region) if body.get("phone_number") else None
    if not phone or not optout.dnc_flag(body, payload):
        return None
    return OptOut(phone, "aloware", "DNC Updated", optout.event_time(body.get("updated_at"), event.received_at))


def dnc_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The Aloware contact an Aloware webhook carries (``body``), empty when it has none."""
    body = payload.get("body")
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True)
class DndChange:
    """What O-7 decided: the registry's answer and, for an opt-out, the number (the caller
    takes it off the lists, R3)."""

    outcome: Outcome
    opted_out_phone: str | None = None


def plan_dnd_changed(event: WebhookEvent, ctx: RuleContext) -> Flow[DndChange]:
    """O-7: GHL's DND state of the contact, re-read, into the opt-out registry (source
    ``ghl``; an opt-in is subject to O-4, so it never clears a texting STOP)."""
    ghl_id = event.entity_id

    def log(status: Any, message: str | None, target_id: str | None = None) -> LogSync:
        return LogSync("O-7", status, "ghl_to_texting", "optout", ghl_id, target_id=target_id, message=message)

    current = yield ReadGhlContact(ghl_id)
    phone = ghl_to_canonical(current, ctx.region).phone if current else None
    if current is None or not phone:
        reason = "ghl_contact_not_found" if current is None else "no_phone"
        yield log("skipped", reason)
        return DndChange(Outcome("skipped", reason))
    sms = ((current.model_extra or {}).get("dndSettings") or {}).get("SMS") or {}
    dnd = current.dnd is True or sms.get("status") == "active"
    status: optout.Status = "opted_out" if dnd else "opted_in"
    decision: optout.Decision = yield RecordOptOut(phone, status, "ghl", "GHL DND", event.received_at)
    if decision.applied:
        yield log("success", f"DND status: {decision.status}", target_id=phone)
    else:
        yield log("skipped", decision.reason, target_id=phone)
    recorded = Outcome("applied") if decision.applied else Outcome("skipped", decision.reason)
    return DndChange(recorded, phone if status == "opted_out" else None)
