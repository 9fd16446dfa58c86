"""Rules CA (spec/outbound.md §1.2): Aloware contact → GHL contact, as pure planners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.domain.contact import GHL_NAMES, CanonicalContact
from services.domain.merge import changed_fields, target_for_ghl


@dataclass(frozen=True)
class CustomFieldIds:
    """GHL custom-field ids for CA-6 (unset → not written)."""

    aloware_contact_id: str | None = None
    lead_source: str | None = None
    intake_source: str | None = None


def custom_fields(ids: CustomFieldIds, aloware_id: str, lead_source: str | None,
                  intake_source: str | None) -> list[dict[str, str]]:
    """CA-6 in GHL's array form."""
    out = []
    for field_id, value in ((ids.aloware_contact_id, aloware_id), (ids.lead_source, lead_source),
                            (ids.intake_source, intake_source)):
        if field_id and value:
            out.append({"id": field_id, "field_value": value})
    return out


def create_fields(incoming: CanonicalContact, disposition: str | None,
                  customs: list[dict[str, str]]) -> dict[str, Any]:
    """CA-3 body (table 1.4.1) without ``locationId``, which the client adds."""
    body: dict[str, Any] = {GHL_NAMES[k]: v for k, v in _fields(incoming).items() if v}
    body["source"] = "aloware"
    if disposition:
        body["tags"] = [disposition]
    if customs:
        body["customFields"] = customs
    return body


def custom_field_changes(current: dict[str, str] | None, wanted: list[dict[str, str]],
                         mode: str) -> list[dict[str, str]]:
    """CA-6 on a contact GHL already has (an update, a duplicate match): the Aloware fields
    GHL does not hold yet, and in mode ``aloware`` also those GHL holds another value for
    (spec/outbound.md §1.5: custom fields are a union, GHL wins on the same key). When the
    current values are not known (None) every field is sent: a guess never skips a write."""
    have = current or {}
    return [f for f in wanted
            if current is None or have.get(f["id"]) is None
            or (mode == "aloware" and have[f["id"]] != f["field_value"])]


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


@dataclass(frozen=True)
class CreateGhlContact:
    """CA-3: POST /contacts/."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class UpdateGhlContact:
    """CA-4: PUT /contacts/{id} with the changed fields only."""

    ghl_id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class AddGhlTags:
    """CA-5: POST /contacts/{id}/tags (additive)."""

    ghl_id: str
    tags: tuple[str, ...]


GhlOperation = CreateGhlContact | UpdateGhlContact | AddGhlTags


@dataclass(frozen=True)
class Plan:
    """What a rule will do: operations in order, or why it does nothing."""

    operations: tuple[GhlOperation, ...] = ()
    skip_reason: str | None = None


def plan_contact_upsert(
    incoming: CanonicalContact,
    known: KnownGhlContact | None,
    *,
    mode: str,
    disposition: str | None,
    customs: list[dict[str, str]],
) -> Plan:
    """CA-3…CA-6 as a pure function: create when GHL has no such contact, else write only
    the differing fields (LP-2), the Aloware custom fields GHL lacks and the missing
    disposition tag; nothing when all agree."""
    if known is None:
        return Plan((CreateGhlContact(create_fields(incoming, disposition, customs)),))
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
    return Plan(tuple(operations)) if operations else Plan(skip_reason="no_changes")
