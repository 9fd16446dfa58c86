"""Rules CA (spec/outbound.md §1.2): Aloware contact → GHL contact, as pure planners.

``plan_aloware_contact`` is the rule (CA-0 … CA-8 around one contact event);
``plan_contact_upsert`` plans the writes to one GHL contact (CA-3 … CA-6), which the
``SyncGhlContact`` operation runs and re-runs when GHL changed under it
(``services/ghl_sync/contacts.py``); ``snapshot_doubt`` says when our copy of the GHL
contact must be re-read first.

Fewest GHL requests per effect (GHL allows 100 / 10 s per location, so requests per synced
contact are the production ceiling; issue #18):

* A contact we have no mapping of is not looked up before it is written when the write
  itself finds it. In mode ``aloware`` that write is ``POST /contacts/upsert``: GHL finds
  the contact by the location's "Allow Duplicate Contact" setting and overwrites the fields
  sent, which is exactly what ``aloware`` asks (§1.5), so new and existing contacts cost one
  request (``tags`` are never in it, an upsert replaces them all; a missing disposition tag
  is added after, from the tags the upsert answered). In ``merge`` and ``ghl`` an upsert
  would overwrite GHL values the merge keeps, so the write is ``POST /contacts/`` (fields,
  tags and custom fields in one body): while the location refuses duplicates (read once per
  process, ``GhlClient.location_allows_duplicates``) that create *is* GHL's duplicate check,
  atomic at GHL, and answers 400 with ``meta.contactId`` when the person exists (CA-3); the
  merge then runs on that contact exactly as after a search. Only a location that allows
  duplicates (or does not say) keeps CA-2's duplicate searches by phone and e-mail first
  (``needs_duplicate_search``). This narrows today's search → create race instead of
  widening it: nothing separates the check from the create, and two deliveries still meet
  at the effect claim of the create (``services/domain/effects.py``). A batched
  ``POST /contacts/search`` over the pending events' phones and e-mails was the alternative
  for locations that allow duplicates; it is not used because the sandbox's OpenAPI check
  refuses every body of that operation (its schema declares no properties).
* An update diffs against the mapping's snapshot when it is fresh (``snapshot_doubt``):
  one PUT, no read.
* Coalescing (spec/outbound.md §0.1, spec/inbound.md G2: only the newest state of a contact
  matters): before any vendor call, an event for which the ledger holds a newer pending
  event of the same Aloware contact ends ``skipped`` ``superseded`` with a ``sync_log``
  row naming that event. "Newer" is a total order (``ReadContactEvent``), so the
  newest of any queue never finds one and is the one that writes. A replay is not
  coalesced: it is asked for to re-check GHL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.payloads.aloware import AlowareContact
from services.domain.contact import GHL_NAMES, CanonicalContact, aloware_to_canonical
from services.domain.merge import changed_fields, target_for_ghl
from services.domain.rules import RuleContext
from services.domain.store import contact_lock_key
from services.ghl_sync.rules.ops import (
    AddGhlTags,
    ContactEventState,
    ContactUpserted,
    ContactWrites,
    CreateGhlContact,
    Done,
    EventRef,
    GhlOperation,
    LockContact,
    Plan,
    ReadContactEvent,
    SyncGhlContact,
    SyncLogFor,
    UpdateGhlContact,
    UpsertGhlContact,
)

__all__ = [
    "SNAPSHOT_MAX_AGE",
    "SOT_SKIP",
    "SYNC_ALOWARE_TO_GHL",
    "SYNC_GHL_TO_ALOWARE",
    "AddGhlTags",
    "ContactWrites",
    "CreateGhlContact",
    "CustomFieldIds",
    "KnownGhlContact",
    "UpdateGhlContact",
    "UpsertGhlContact",
    "create_fields",
    "custom_field_changes",
    "custom_fields",
    "missing_tags",
    "needs_duplicate_search",
    "parse_time",
    "plan_aloware_contact",
    "plan_contact_upsert",
    "snapshot_doubt",
    "update_fields",
    "upsert_fields",
]

SOT_SKIP = "aloware_contact_event_ignored_source_of_truth_is_ghl"
# RuleContext flags and limits these rules honour
SYNC_ALOWARE_TO_GHL = "sync_aloware_contacts_to_ghl"  # SYNC_ALOWARE_CONTACTS_TO_GHL (CA-0)
SYNC_GHL_TO_ALOWARE = "sync_ghl_contacts_to_aloware"  # CG runs, so snapshots are kept fresh
SNAPSHOT_MAX_AGE = "ghl_snapshot_max_age_s"  # GHL_SNAPSHOT_MAX_AGE_S


@dataclass(frozen=True)
class CustomFieldIds:
    """GHL custom-field ids for CA-6 (unset → not written)."""

    aloware_contact_id: str | None = None
    lead_source: str | None = None
    intake_source: str | None = None


def custom_fields(
    ids: CustomFieldIds, aloware_id: str, lead_source: str | None, intake_source: str | None
) -> list[dict[str, str]]:
    """CA-6 in GHL's array form."""
    out = []
    for field_id, value in (
        (ids.aloware_contact_id, aloware_id),
        (ids.lead_source, lead_source),
        (ids.intake_source, intake_source),
    ):
        if field_id and value:
            out.append({"id": field_id, "field_value": value})
    return out


def create_fields(incoming: CanonicalContact, disposition: str | None, customs: list[dict[str, str]]) -> dict[str, Any]:
    """CA-3 body (table 1.4.1) without ``locationId``, which the client adds."""
    body: dict[str, Any] = {GHL_NAMES[k]: v for k, v in _fields(incoming).items() if v}
    body["source"] = "aloware"
    if disposition:
        body["tags"] = [disposition]
    if customs:
        body["customFields"] = customs
    return body


def upsert_fields(incoming: CanonicalContact, customs: list[dict[str, str]]) -> dict[str, Any]:
    """The ``POST /contacts/upsert`` body of mode ``aloware`` without ``locationId``: the
    Aloware values that are set (an empty one leaves GHL's, as ``target_for_ghl`` does) and
    the CA-6 custom fields; never ``tags`` (an upsert replaces every tag) nor ``source``
    (§1.4.1: on create only, and an upsert may land on an existing contact)."""
    body: dict[str, Any] = {GHL_NAMES[k]: v for k, v in _fields(incoming).items() if v}
    if customs:
        body["customFields"] = customs
    return body


def needs_duplicate_search(mode: str, duplicates_allowed: bool | None) -> bool:
    """Whether a contact without a mapping must be looked up (CA-2 b, c) before its write:
    not in mode ``aloware`` (the upsert finds it), nor while the location refuses duplicates
    (the create's duplicate 400 finds it); otherwise, also when GHL did not say, yes."""
    return mode != "aloware" and duplicates_allowed is not False


def custom_field_changes(
    current: dict[str, str] | None, wanted: list[dict[str, str]], mode: str
) -> list[dict[str, str]]:
    """CA-6 on a contact GHL already has (an update, a duplicate match): the Aloware fields
    GHL does not hold yet, and in mode ``aloware`` also those GHL holds another value for
    (spec/outbound.md §1.5: custom fields are a union, GHL wins on the same key). When the
    current values are not known (None) every field is sent: a guess never skips a write."""
    have = current or {}
    return [
        f
        for f in wanted
        if current is None or have.get(f["id"]) is None or (mode == "aloware" and have[f["id"]] != f["field_value"])
    ]


def update_fields(current: CanonicalContact, incoming: CanonicalContact, mode: str) -> dict[str, Any]:
    """CA-4: only the fields that differ under the source-of-truth mode; never tags/notes."""
    target = target_for_ghl(current, incoming, mode)
    return {GHL_NAMES[k]: v for k, v in changed_fields(current, target).items()}


def missing_tags(current_tags: tuple[str, ...] | list[str], wanted: list[str]) -> list[str]:
    """CA-5/LP-2: tags to add, compared case-insensitively (GHL lower-cases tags ⚠)."""
    have = {t.lower() for t in current_tags}
    return [t for t in wanted if t and t.lower() not in have]


def _fields(contact: CanonicalContact) -> dict[str, Any]:
    return {k: getattr(contact, k) for k in GHL_NAMES}


@dataclass(frozen=True)
class KnownGhlContact:
    """The GHL contact this Aloware contact corresponds to, as we last knew it.

    ``from_snapshot``: our copy, trusted without a read (a write's answer may still show a
    change it lacked). ``missed``: GHL holds a change our copy lacked, so Aloware may lack
    it too; writes made on top of it are not recorded as pure echoes of ours (LP-1), so the
    webhook they cause lets CG carry that change to Aloware."""

    ghl_id: str
    contact: CanonicalContact
    from_snapshot: bool = False
    missed: bool = False


def plan_contact_upsert(
    incoming: CanonicalContact,
    known: KnownGhlContact | None,
    ctx: RuleContext | None = None,
    *,
    mode: str | None = None,
    disposition: str | None,
    customs: list[dict[str, str]],
) -> ContactWrites:
    """CA-3…CA-6 as a pure function: create when GHL has no such contact, else write only
    the differing fields (LP-2), the Aloware custom fields GHL lacks and the missing
    disposition tag; nothing when all agree. ``mode`` (CONTACT_SOURCE_OF_TRUTH) is the
    context's unless given."""
    mode = mode or (ctx.source_of_truth if ctx is not None else "merge")
    if known is None and mode == "aloware":
        return ContactWrites(
            (UpsertGhlContact(upsert_fields(incoming, customs), (disposition,) if disposition else ()),)
        )
    if known is None:
        return ContactWrites((CreateGhlContact(create_fields(incoming, disposition, customs)),))
    operations: list[GhlOperation] = []
    changes = update_fields(known.contact, incoming, mode)
    customs_changed = custom_field_changes(known.contact.custom_values(), customs, mode)
    if customs_changed:
        changes["customFields"] = customs_changed
    if changes:
        operations.append(UpdateGhlContact(known.ghl_id, changes))
    add = missing_tags(known.contact.tags, [disposition] if disposition else [])
    if add:
        operations.append(AddGhlTags(known.ghl_id, tuple(add)))
    if operations:
        return ContactWrites(tuple(operations))
    return ContactWrites(skip_reason="no_changes")


def snapshot_doubt(snapshot: CanonicalContact, customs: list[dict[str, str]], ctx: RuleContext) -> str | None:
    """Why the mapping's snapshot may not be GHL's current state, as far as the snapshot
    itself tells (the executor also asks for GHL contact webhooks not yet absorbed), or None.

    Only CG refreshes a snapshot from GHL's side: it re-reads the contact after each GHL
    contact webhook. So the snapshot is in doubt when that cannot have happened: a replay
    (asked for to re-check GHL), the GHL → Aloware direction switched off, a contact without
    phone (CG-2 skips those), custom fields CA-6 needs but the snapshot predates, or an age
    past ``GHL_SNAPSHOT_MAX_AGE_S``, which bounds how long a webhook GHL never sent goes
    unnoticed."""
    if ctx.replay:
        return "replay"
    if not ctx.flag(SYNC_GHL_TO_ALOWARE):
        return "ghl_to_aloware_off"
    if not snapshot.phone:
        return "no_phone"
    if customs and snapshot.custom_fields is None:
        return "custom_fields_unknown"
    seen = snapshot.seen_at
    if seen is None or (ctx.now - seen).total_seconds() > ctx.limit(SNAPSHOT_MAX_AGE, 0):
        return "age"
    return None


def parse_time(value: str | None) -> datetime | None:
    """An ISO time from a payload (UTC when it names no zone); None when unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def plan_aloware_contact(body: AlowareContact, event: EventRef, ctx: RuleContext) -> Plan:
    """CA-0 … CA-8 for one Aloware contact event: skipped while Aloware is not a source of
    contacts (CA-0); under the contact's lock, an echo of our own write (LP-1) and an event
    older than the mapping's watermark (CA-2) change nothing; otherwise the GHL contact is
    found or created and brought up to date (``SyncGhlContact``), unless a newer event of
    the contact is still to run (coalescing: this one ends ``superseded``)."""
    log = SyncLogFor("aloware_to_ghl", "contact", body.id)
    if not ctx.flag(SYNC_ALOWARE_TO_GHL):
        yield log.row("skipped", "CA-0", message=SOT_SKIP)
        return Done("skipped", SOT_SKIP)
    incoming = aloware_to_canonical(body, ctx.region)
    event_at = parse_time(body.updated_at) or event.received_at
    yield LockContact(contact_lock_key(incoming.phone, aloware_id=body.id))
    coalesce = not ctx.replay and bool(body.id)
    seen: ContactEventState = yield ReadContactEvent(
        body.id, incoming.projection_hash(), event_at if coalesce else None
    )
    if seen.echo:
        yield log.row("skipped", "LP-1", message="middleware-originated")
        return Done("echo", "middleware-originated")
    mapping = seen.mapping
    # An event as old as the watermark is a redelivery of the newest one: skipped, except
    # in a replay, which is asked for to re-check GHL against it.
    watermark = mapping.aloware_event_at if mapping is not None else None
    if (
        mapping is not None
        and watermark is not None
        and (event_at < watermark or (event_at == watermark and not ctx.replay))
    ):
        yield log.row("skipped", "CA-2", target_id=mapping.ghl_id, message="stale_event")
        return Done("skipped", "stale_event")
    if seen.newer is not None:
        target = mapping.ghl_id if mapping is not None else None
        yield log.row("skipped", "CA", target_id=target, message="superseded", details={"superseded_by": seen.newer})
        return Done("skipped", "superseded")
    upserted: ContactUpserted = yield SyncGhlContact(body, mapping, event_at)
    if upserted.wrote:
        yield log.row("success", "CA", target_id=upserted.ghl_id)
        return Done("applied")
    yield log.row("skipped", "CA", target_id=upserted.ghl_id, message="no_changes")
    return Done("skipped", "no_changes")
