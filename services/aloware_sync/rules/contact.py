"""Rules CG (spec/outbound.md §1.3, §1.4.2, §1.5) and D-3: a GHL contact → its Aloware
contact, and a GHL deletion → off every call list, as planners.

``plan_ghl_contact_sync`` is the CG-3…CG-6 decision (GHL contact + Aloware contact → writes);
``plan_contact_sync`` is the whole rule around it (LP-1 echo checks, CG-1, CG-2, the lock,
the writes, CG-7), a flow the executor drives (``rules/ops.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from contracts.envelope import WebhookEvent
from contracts.payloads import is_ghl_marketplace
from services.aloware_sync.rules.known import FLAG_ECHO_READS_TIMEZONE
from services.aloware_sync.rules.ops import (
    AlowareOperation,
    CreateAlowareContact,
    Flow,
    HoldContactLock,
    IsEcho,
    LogSync,
    LookupAlowareContact,
    MarkGhlDeleted,
    ReadGhlContact,
    ReadMapping,
    RemoveFromAllLists,
    UpdateAlowareContact,
    UpsertMapping,
    WriteBackToGhl,
)
from services.clients.ghl import GhlContact
from services.domain.contact import ALOWARE_NAMES, FIELDS, CanonicalContact, aloware_to_canonical, ghl_to_canonical
from services.domain.merge import Decision, plan_existing
from services.domain.rules import RuleContext
from services.infra.delivery import Outcome

__all__ = [
    "ECHO",
    "AlowareOperation",
    "ContactSynced",
    "CreateAlowareContact",
    "Plan",
    "UpdateAlowareContact",
    "WriteBackToGhl",
    "aloware_form",
    "marketplace_contact",
    "plan_contact_deleted",
    "plan_contact_sync",
    "plan_echo_check",
    "plan_ghl_contact_sync",
]

ECHO = Outcome("echo", "middleware-originated")


def aloware_form(contact: CanonicalContact) -> dict[str, Any]:
    """Lead API fields (table 1.4.2); empty values are not sent."""
    return {ALOWARE_NAMES[k]: getattr(contact, k) for k in FIELDS if getattr(contact, k)}


@dataclass(frozen=True)
class Plan:
    """Operations in order, the merge decisions behind them, or why nothing happens."""

    operations: tuple[AlowareOperation, ...] = ()
    decisions: tuple[Decision, ...] = ()
    skip_reason: str | None = None


def plan_ghl_contact_sync(ghl: CanonicalContact, alo: CanonicalContact | None, mode: str) -> Plan:
    """CG-3…CG-6 as a pure function of the GHL contact, the Aloware one (if any) and
    ``CONTACT_SOURCE_OF_TRUTH`` (``RuleContext.source_of_truth``)."""
    if alo is None:
        return Plan((CreateAlowareContact(aloware_form(ghl), ghl),))
    target, ghl_back, decisions = plan_existing(ghl, alo, mode)
    operations: list[AlowareOperation] = []
    if target is not None:
        operations.append(UpdateAlowareContact(aloware_form(target), target))
    if ghl_back:
        operations.append(WriteBackToGhl(ghl_back))
    if not operations:
        return Plan(decisions=tuple(decisions), skip_reason="no_changes")
    return Plan(tuple(operations), tuple(decisions))


@dataclass(frozen=True)
class ContactSynced:
    """CG's outcome and the GHL contact as it last saw it (None when it read none), so the
    list rules that follow do not read GHL a second time."""

    outcome: Outcome
    contact: GhlContact | None


def marketplace_contact(payload: dict[str, Any]) -> GhlContact | None:
    """The whole contact a marketplace (family A) body carries; None for other bodies."""
    if not is_ghl_marketplace(payload):
        return None
    try:
        return GhlContact.model_validate(payload)
    except ValidationError:
        return None


def body_echo_hash(payload: dict[str, Any], seen: CanonicalContact | None, ctx: RuleContext) -> str | None:
    """LP-1's hash of a marketplace body (``seen``: its canonical form; ``ghl_write_hashes``
    records both kinds): the full
    projection when the body has a timezone; without one (GHL's contact webhooks carry none)
    the projection without it, or None under ``GHL_ECHO_IGNORES_TIMEZONE=false`` (the body
    cannot show a person's timezone edit, so the contact is read back and checked whole)."""
    if seen is None:
        return None
    if "timezone" in payload:
        return seen.projection_hash()
    return None if ctx.flag(FLAG_ECHO_READS_TIMEZONE) else seen.ghl_echo_hash()


def _cg(ghl_id: str, rule: str, status: Any, message: str | None, **extra: Any) -> LogSync:
    return LogSync(rule, status, "ghl_to_aloware", "contact", ghl_id, message=message, **extra)


def plan_contact_sync(event: WebhookEvent, ghl_id: str, ctx: RuleContext) -> Flow[ContactSynced]:
    """CG-1 … CG-7 for the GHL contact ``ghl_id`` (the event's own, or the contact of a tag
    or opportunity event).

    LP-1 first on the webhook body itself when it is this contact's marketplace body (it
    carries the contact but its timezone: an echo is recognised without re-reading GHL,
    ``body_echo_hash``; under ``GHL_ECHO_IGNORES_TIMEZONE=false`` a body without one is not
    checked alone), then on GHL's answer under the contact's lock, where the Aloware contact
    is looked up and written.

    A body that is not (yet) an echo is checked once more under the lock of its phone: GHL's
    webhook for a contact ghl-sync just created can arrive while ghl-sync, holding that lock,
    has not recorded the write yet; waiting for the lock turns that race into an echo found
    without a GHL read."""
    body = marketplace_contact(event.payload) if ghl_id == event.entity_id else None
    seen = ghl_to_canonical(body, ctx.region) if body is not None else None
    seen_hash = body_echo_hash(event.payload, seen, ctx)
    if seen is not None and seen_hash is not None:
        if (yield IsEcho("ghl", ghl_id, seen_hash)):
            yield _cg(ghl_id, "LP-1", "skipped", "middleware-originated")
            return ContactSynced(ECHO, body)
        if seen.phone:
            yield HoldContactLock(seen.phone, ghl_id)
            if (yield IsEcho("ghl", ghl_id, seen_hash)):
                yield _cg(ghl_id, "LP-1", "skipped", "middleware-originated")
                return ContactSynced(ECHO, body)
    current = yield ReadGhlContact(ghl_id)
    if current is None:
        yield _cg(ghl_id, "CG-1", "skipped", "ghl_contact_not_found")
        return ContactSynced(Outcome("skipped", "ghl_contact_not_found"), None)
    ghl = ghl_to_canonical(current, ctx.region)
    if not ghl.phone:
        yield _cg(ghl_id, "CG-2", "skipped", "no_phone_for_aloware")
        return ContactSynced(Outcome("skipped", "no_phone_for_aloware"), current)
    yield HoldContactLock(ghl.phone, ghl_id)
    if (yield IsEcho("ghl", ghl_id, ghl.projection_hash())):
        yield _cg(ghl_id, "LP-1", "skipped", "middleware-originated")
        return ContactSynced(ECHO, current)
    record = yield LookupAlowareContact(ghl.phone)
    plan = plan_ghl_contact_sync(ghl, aloware_to_canonical(record, ctx.region) if record else None, ctx.source_of_truth)
    wrote = False
    for operation in plan.operations:
        if isinstance(operation, CreateAlowareContact):
            record = yield operation
        elif isinstance(operation, UpdateAlowareContact):
            yield UpdateAlowareContact(operation.form, operation.expected, aloware_id=record.id)
        else:
            updated = yield WriteBackToGhl(operation.fields, ghl_id=ghl_id)
            if updated is None:
                return ContactSynced(Outcome("skipped", "ghl_contact_not_found"), None)
            current, ghl = updated, ghl_to_canonical(updated, ctx.region)
        wrote = True
    # seen at the attempt's time (the snapshot's age is how long CA may trust it)
    snapshot = ghl.with_fields(seen_at=ctx.now).snapshot()
    yield UpsertMapping(ghl_id, record.id, ghl.phone, ghl.email, event.received_at, snapshot)
    yield _cg(
        ghl_id,
        "CG",
        "success" if wrote else "skipped",
        None if wrote else "no_changes",
        target_id=record.id,
        details={"decisions": [d.as_dict() for d in plan.decisions]},
    )
    return ContactSynced(Outcome("applied") if wrote else Outcome("skipped", "no_changes"), current)


def plan_echo_check(event: WebhookEvent, ghl_id: str, ctx: RuleContext) -> Flow[ContactSynced]:
    """R1 with the contact sync off (``SYNC_GHL_CONTACTS_TO_ALOWARE=false``): the list rules
    still must not act on our own echo, so the check CG would have made is made here (the
    contact read, when needed, is the one the list rules would make anyway)."""
    skipped = Outcome("skipped", "ghl_contact_sync_disabled")
    body = marketplace_contact(event.payload)
    seen_hash = body_echo_hash(event.payload, ghl_to_canonical(body, ctx.region) if body else None, ctx)
    if seen_hash is not None and (yield IsEcho("ghl", event.entity_id, seen_hash)):
        return ContactSynced(ECHO, body)
    if is_ghl_marketplace(event.payload) and (body is None or seen_hash is not None):
        return ContactSynced(skipped, None)  # a body that is not our echo (one not to trust alone is read)
    current = yield ReadGhlContact(ghl_id)
    if current is None:
        return ContactSynced(skipped, None)
    echo = yield IsEcho("ghl", current.id, ghl_to_canonical(current, ctx.region).projection_hash())
    return ContactSynced(ECHO if echo else skipped, current)


def plan_contact_deleted(ghl_id: str) -> Flow[Outcome]:
    """D-3: take the Aloware contact off every call list; remember the GHL deletion."""
    mapping = yield ReadMapping(ghl_id=ghl_id)
    yield HoldContactLock(mapping.phone if mapping else None, ghl_id)
    mapping = yield ReadMapping(ghl_id=ghl_id)  # again under the lock
    if mapping is None or mapping.aloware_id is None:
        yield LogSync("D-3", "skipped", "ghl_to_aloware", "contact", ghl_id, message="No contact mapping found")
        return Outcome("skipped", "No contact mapping found")
    removed = yield RemoveFromAllLists(mapping.aloware_id)
    yield MarkGhlDeleted(ghl_id)
    yield LogSync(
        "D-3",
        "success",
        "ghl_to_aloware",
        "contact",
        ghl_id,
        target_id=mapping.aloware_id,
        message=None if removed else "already absent in Aloware",
    )
    return Outcome("applied")
