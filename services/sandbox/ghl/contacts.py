"""Fake GHL contacts: duplicate search, create (refusing duplicates as GHL does unless the
location allows them), upsert (matching per the location's "Allow Duplicate Contact" setting,
``services/sandbox/ghl/location.py``), read, update (custom fields by id), delete, tags and
notes; each write sends GHL's webhook, signed.

``route_contacts`` also answers ``/locations/{id}`` (``location.route_location``): the gate's
route table (``gate.ROUTES``) is owned elsewhere, and the location's settings decide how the
contact routes behave."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from contracts.phone import to_e164
from services.infra.signing import ghl_ed25519_signature
from services.sandbox.ghl.location import allows_duplicates, route_location
from services.sandbox.ghl.request import Answer, GhlRequest, not_found
from services.sandbox.state import Sandbox

__all__ = ["GHL_CONTACT_FIELDS", "find_contact", "new_contact", "route_contacts", "send_ghl_webhook"]

GHL_CONTACT_FIELDS = (
    "firstName", "lastName", "name", "email", "phone", "address1", "city", "state", "postalCode",
    "website", "timezone", "dnd", "dndSettings", "source", "dateOfBirth", "country",
    "companyName", "assignedTo",
)  # fmt: skip


# what GHL's contact webhooks leave out of the contact they carry (its webhook docs, the
# ContactCreate / ContactUpdate / ContactTagUpdate fixtures): its API has a timezone, they do not
WEBHOOK_OMITS = frozenset({"timezone"})


def send_ghl_webhook(sandbox: Sandbox, kind: str, contact: dict[str, Any]) -> None:
    """GHL's webhook of ``kind`` for ``contact``, Ed25519-signed (nothing without a signing key)."""
    if sandbox.ghl_signing_key is None:
        return
    shown = {k: v for k, v in contact.items() if k not in WEBHOOK_OMITS}
    body = json.dumps({
        "type": kind, "locationId": contact.get("locationId"), **shown,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "webhookId": str(uuid.uuid4()),
    }).encode()  # fmt: skip
    signature = ghl_ed25519_signature(sandbox.ghl_signing_key, body)
    sandbox.webhooks.emit("/api/webhooks/ghl", {"x-ghl-signature": signature}, body)


def find_contact(sandbox: Sandbox, *, phone: str | None = None, email: str | None = None) -> dict[str, Any] | None:
    for contact in sandbox.state.ghl_contacts.values():
        if phone and contact.get("phone") == phone:
            return contact
        if email and (contact.get("email") or "").lower() == email.lower():
            return contact
    return None


def route_contacts(sandbox: Sandbox, request: GhlRequest) -> Answer | None:
    """The answer of a ``/contacts`` call, ``None`` when no contact route matches."""
    parts = request.parts
    if parts[:1] == ["locations"]:
        return route_location(sandbox, request)
    if parts == ["contacts", "search", "duplicate"]:
        number = request.query.get("number")
        phone = to_e164(number) if number else None
        return 200, {"contact": find_contact(sandbox, phone=phone, email=request.query.get("email"))}
    if parts == ["contacts"] and request.method == "POST":
        return _create(sandbox, request)
    if parts == ["contacts", "upsert"] and request.method == "POST":
        return _upsert(sandbox, request)
    if len(parts) >= 2 and parts[0] == "contacts":
        contact = sandbox.state.ghl_contacts.get(parts[1])
        if contact is None:
            return not_found("Contact not found")
        return _route_one(sandbox, request, parts[1], contact)
    return None


def _route_one(sandbox: Sandbox, request: GhlRequest, contact_id: str, contact: dict[str, Any]) -> Answer | None:
    method, body, rest = request.method, request.body, request.parts[2:]
    if not rest and method == "GET":
        return 200, {"contact": contact}
    if not rest and method == "PUT":
        return _update(sandbox, contact, body)
    if not rest and method == "DELETE":
        del sandbox.state.ghl_contacts[contact_id]
        send_ghl_webhook(sandbox, "ContactDelete", contact)
        return 200, {"succeded": True}
    if rest == ["tags"]:
        return _tags(sandbox, contact, method, body)
    if rest == ["notes"] and method == "GET":
        return 200, {"notes": list(sandbox.state.ghl_notes.get(contact["id"], []))}
    if rest == ["notes"] and method == "POST":
        note = {
            "id": "note" + uuid.uuid4().hex[:16],
            "body": body["body"],
            "contactId": contact["id"],
            "dateAdded": datetime.now(UTC).isoformat(),
        }
        sandbox.state.ghl_notes[contact["id"]].append(note)
        return 201, {"note": note}
    return None


def _create(sandbox: Sandbox, request: GhlRequest) -> Answer:
    body, location = request.body, request.location
    phone = to_e164(body.get("phone")) if body.get("phone") else None
    duplicates_allowed = allows_duplicates(sandbox, location)
    existing = None if duplicates_allowed else find_contact(sandbox, phone=phone, email=body.get("email"))
    if existing:
        return 400, {
            "statusCode": 400,
            "message": "This location does not allow duplicated contacts.",
            "meta": {
                "contactId": existing["id"],
                "contactName": existing.get("firstName"),
                "matchingField": "phone" if phone else "email",
            },
        }
    contact = new_contact(sandbox, body, location, phone)
    send_ghl_webhook(sandbox, "ContactCreate", contact)
    return 201, {"contact": contact}


def _upsert(sandbox: Sandbox, request: GhlRequest) -> Answer:
    """GHL's upsert: the contact the location's duplicate rule finds (phone first, then
    e-mail) gets the fields sent, ``tags`` replacing all of its tags, as GHL documents;
    otherwise, or when duplicates are allowed and ``createNewIfDuplicateAllowed`` is true, a
    new contact. 200 either way, ``new`` saying which."""
    body, location = request.body, request.location
    phone = to_e164(body.get("phone")) if body.get("phone") else None
    forced = bool(body.get("createNewIfDuplicateAllowed")) and allows_duplicates(sandbox, location)
    existing = None if forced else find_contact(sandbox, phone=phone, email=body.get("email"))
    if existing is None:
        contact = new_contact(sandbox, body, location, phone)
        send_ghl_webhook(sandbox, "ContactCreate", contact)
        return 200, {"new": True, "contact": contact, "traceId": uuid.uuid4().hex}
    changed = _apply_fields(existing, body)
    if "tags" in body and [t.lower() for t in body["tags"]] != existing.get("tags", []):
        existing["tags"] = [t.lower() for t in body["tags"]]
        changed = True
    if changed:
        existing["dateUpdated"] = datetime.now(UTC).isoformat()
        send_ghl_webhook(sandbox, "ContactUpdate", existing)
    return 200, {"new": False, "contact": existing, "traceId": uuid.uuid4().hex}


def new_contact(sandbox: Sandbox, body: dict[str, Any], location: str, phone: str | None) -> dict[str, Any]:
    contact_id = "sbx" + uuid.uuid4().hex[:17]
    contact = {
        "id": contact_id,
        "locationId": location,
        **{k: body[k] for k in GHL_CONTACT_FIELDS if k in body},
        "tags": [t.lower() for t in body.get("tags", [])],
        "customFields": [
            {"id": f["id"], "value": f.get("field_value", f.get("value"))}
            for f in body.get("customFields", [])
            if isinstance(f, dict) and "id" in f
        ],
        "dateAdded": datetime.now(UTC).isoformat(),
        "dateUpdated": datetime.now(UTC).isoformat(),
    }
    if phone:
        contact["phone"] = phone
    sandbox.state.ghl_contacts[contact_id] = contact
    return contact


def _update(sandbox: Sandbox, contact: dict[str, Any], body: Any) -> Answer:
    if _apply_fields(contact, body):
        contact["dateUpdated"] = datetime.now(UTC).isoformat()
        send_ghl_webhook(sandbox, "ContactUpdate", contact)
    return 200, {"succeded": True, "contact": contact}


def _apply_fields(contact: dict[str, Any], body: Any) -> bool:
    """Write the scalar fields and custom fields (by id) ``body`` names; whether any changed."""
    changed = False
    for key in GHL_CONTACT_FIELDS:
        if key in body and contact.get(key) != body[key]:
            contact[key] = to_e164(body[key]) if key == "phone" else body[key]
            changed = True
    values = {
        f["id"]: f.get("field_value", f.get("value"))
        for f in body.get("customFields", [])
        if isinstance(f, dict) and "id" in f
    }  # GHL updates the fields named, by id
    held = {f["id"]: f.get("value") for f in contact.get("customFields", [])}
    if any(held.get(k) != v for k, v in values.items()):
        contact["customFields"] = [{"id": k, "value": v} for k, v in {**held, **values}.items()]
        changed = True
    return changed


def _tags(sandbox: Sandbox, contact: dict[str, Any], method: str, body: Any) -> Answer:
    """POST adds, any other method removes (GHL's DELETE carries the tags in its body)."""
    tags = [t.lower() for t in body["tags"]]
    before = list(contact.get("tags", []))
    if method == "POST":
        contact["tags"] = before + [t for t in tags if t not in before]
    else:
        contact["tags"] = [t for t in before if t not in tags]
    if contact["tags"] != before:
        send_ghl_webhook(sandbox, "ContactTagUpdate", contact)
    return (201 if method == "POST" else 200), {"tags": contact["tags"]}
