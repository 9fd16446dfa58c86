"""Opt-outs GHL hears of (spec/outbound.md §1.7 D-1, §1.9 O-2, O-3), as planners: the
registry first (O-1 with O-4 precedence, ``services/domain/optout.py``), then the tags on
the GHL contact of the number, found or created.

aloware-sync takes the same events off the call lists (R3) with its own rules; both read
an event's DNC flag and time through ``services.domain.optout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from contracts.payloads.aloware import AlowareContact
from contracts.payloads.texting import NormalisedTextingMessage
from contracts.phone import to_e164
from services.domain import optout
from services.domain.optout import Decision
from services.domain.rules import RuleContext
from services.ghl_sync.rules.ops import (
    AddTags,
    Done,
    EventRef,
    LockContact,
    LogSync,
    Plan,
    RecordOptOut,
    RemoveTags,
    ResolveContact,
    ResolveTextingContact,
    SyncLogFor,
)
from services.infra.errors import Permanent

__all__ = [
    "DNC_TAGS",
    "SMS_OPTOUT_TAGS",
    "DncUpdate",
    "parse_dnc_update",
    "plan_dnc_update",
    "plan_keyword",
    "plan_texting_optout",
]

DNC_TAGS = ("DNC", "Do Not Call")
SMS_OPTOUT_TAGS = ("DNC-SMS", "SMS Opted Out")


@dataclass(frozen=True)
class DncUpdate:
    """D-1: what a ``Contact DNC Updated`` webhook says. ``contact``: its body, None when
    the body has no id (the contact is then known by its number only)."""

    aloware_id: str | None
    phone: str | None
    dnc: bool
    updated_at: Any
    contact: AlowareContact | None


def parse_dnc_update(payload: dict[str, Any]) -> DncUpdate:
    """The body's contact (``AlowareContact``) and the DNC flag (body, then top level)."""
    body: dict[str, Any] = payload["body"] if isinstance(payload.get("body"), dict) else {}
    contact = None
    if body.get("id") is not None:
        try:
            contact = AlowareContact.model_validate(body)
        except ValidationError as exc:
            raise Permanent(f"invalid Aloware contact payload: {exc.errors()[0]['msg']}") from None
    phone = body.get("phone_number")
    return DncUpdate(
        aloware_id=str(body["id"]) if body.get("id") is not None else None,
        phone=str(phone) if phone else None,
        dnc=optout.dnc_flag(body, payload),
        updated_at=body.get("updated_at"),
        contact=contact,
    )


def plan_dnc_update(update: DncUpdate, event: EventRef, ctx: RuleContext) -> Plan:
    """D-1: the registry (with O-4 precedence), then under the number's lock the GHL
    contact found or created (mapped ``bidirectional``) gets ``DNC``/``Do Not Call`` added,
    or removed when the flag was cleared — unless the registry kept another state."""
    log = SyncLogFor("aloware_to_ghl", "contact", update.aloware_id or "unknown")
    phone = to_e164(update.phone, ctx.region) if update.phone else None
    if not phone:
        yield log.row("skipped", "D-1", message="No phone number for DNC sync")
        return Done("skipped", "No phone number for DNC sync")
    status: optout.Status = "opted_out" if update.dnc else "opted_in"
    decision: Decision = yield RecordOptOut(
        phone,
        status,
        "aloware",
        "DNC Updated" if update.dnc else "DNC Removed",
        at=optout.event_time(update.updated_at, event.received_at),
    )
    contact = update.contact or AlowareContact(id="", phone_number=phone)
    yield LockContact(phone)
    ghl_id = yield ResolveContact(contact, direction="bidirectional")
    if not decision.applied:
        yield log.row(
            "skipped", "D-1", target_id=ghl_id, message=decision.reason, details={"registry": decision.status}
        )
        return Done("skipped", decision.reason)
    changed = yield (AddTags(ghl_id, DNC_TAGS) if update.dnc else RemoveTags(ghl_id, DNC_TAGS))
    yield log.row(
        "success", "D-1", target_id=ghl_id, message=f"DNC status: {status}", details={"tags_changed": changed}
    )
    return Done("applied")


def plan_texting_optout(msg: NormalisedTextingMessage, event: EventRef, ctx: RuleContext) -> Plan:
    """O-2: the registry says opted out (texting, STOP); the GHL contact of the number,
    found or created as a texting contact, gets ``DNC-SMS`` and ``SMS Opted Out``."""
    log = SyncLogFor("texting_to_ghl", "optout", msg.message_id or "unknown")
    phone = to_e164(msg.from_number or msg.to_number, ctx.region)
    if not phone:
        raise Permanent("No phone number in payload")
    decision: Decision = yield RecordOptOut(
        phone, "opted_out", "texting", "STOP", at=optout.event_time(msg.timestamp, event.received_at)
    )
    yield LockContact(phone)
    ghl_id = yield ResolveTextingContact(phone)
    added = yield AddTags(ghl_id, SMS_OPTOUT_TAGS)
    yield log.row(
        "success",
        "O-2",
        target_id=ghl_id,
        message=None if decision.applied else decision.reason,
        details={"tags_added": added},
    )
    return Done("applied")


def plan_keyword(text: str | None, phone: str, event: EventRef) -> Plan:
    """M-1.4 / O-3, inside M-1 under the number's lock: a text that is exactly a STOP-type
    word opts the number out, START/UNSTOP back in, and the SMS opt-out tags follow."""
    word = optout.keyword(text)
    if word not in ("opt_out", "opt_in"):
        return Done("skipped", "no_keyword")
    status: optout.Status = "opted_out" if word == "opt_out" else "opted_in"
    reason = "STOP" if word == "opt_out" else "START"
    decision: Decision = yield RecordOptOut(phone, status, "texting", reason, at=event.received_at)
    ghl_id = yield ResolveTextingContact(phone)
    changed = yield (AddTags(ghl_id, SMS_OPTOUT_TAGS) if status == "opted_out" else RemoveTags(ghl_id, SMS_OPTOUT_TAGS))
    yield LogSync(
        "texting_to_ghl",
        "optout",
        phone,
        "success" if decision.applied else "skipped",
        "O-3",
        target_id=ghl_id,
        message=f"{status} ({reason})" if decision.applied else decision.reason,
        details={"tags_changed": changed},
    )
    return Done("applied")
