"""Sandbox knobs on the fake GHL (``/_sandbox/ghl/...``, ``/_sandbox/rate-limit``): look at its
records, and change them the way a GHL admin or a lost webhook would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from contracts.phone import to_e164
from services.sandbox.ghl.contacts import new_contact, send_ghl_webhook
from services.sandbox.state import SandboxDep

__all__ = ["router"]

router = APIRouter()


@router.get("/_sandbox/ghl/contacts")
async def ghl_contacts(sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(list(sandbox.state.ghl_contacts.values()))


@router.post("/_sandbox/ghl/contacts", status_code=201)
async def ghl_create_silently(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """A contact the location ``locationId`` had before the middleware ran: created as
    ``POST /contacts/`` would (no duplicate check), without GHL's webhook."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not body.get("locationId"):
        return JSONResponse({"error": "a JSON object with locationId is required"}, status_code=422)
    phone = to_e164(body["phone"]) if body.get("phone") else None
    return JSONResponse(new_contact(sandbox, body, body["locationId"], phone), status_code=201)


@router.patch("/_sandbox/ghl/contacts/{contact_id}")
async def ghl_edit_silently(contact_id: str, request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Change a GHL contact without sending its webhook (a webhook GHL lost)."""
    contact = sandbox.state.ghl_contacts.get(contact_id)
    if contact is None:
        return JSONResponse({"error": "no such contact"}, status_code=404)
    contact.update(await request.json())
    contact["dateUpdated"] = datetime.now(UTC).isoformat()
    return JSONResponse(contact)


@router.post("/_sandbox/ghl/contacts/{contact_id}/webhook/{kind}")
async def ghl_send_webhook(contact_id: str, kind: str, sandbox: SandboxDep) -> JSONResponse:
    """Have GHL send a webhook of ``kind`` (e.g. ContactDndUpdate) for the contact as it is."""
    contact = sandbox.state.ghl_contacts.get(contact_id)
    if contact is None:
        return JSONResponse({"error": "no such contact"}, status_code=404)
    send_ghl_webhook(sandbox, kind, contact)
    return JSONResponse({"sent": kind})


@router.delete("/_sandbox/ghl/contacts/{contact_id}")
async def ghl_delete_silently(contact_id: str, sandbox: SandboxDep) -> JSONResponse:
    """Delete a GHL contact without sending its webhook."""
    found = sandbox.state.ghl_contacts.pop(contact_id, None)
    return JSONResponse({"deleted": found is not None}, status_code=200 if found else 404)


@router.post("/_sandbox/ghl/custom-fields")
async def ghl_new_custom_field(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Define a contact custom field, as a GHL admin would (``name``, ``fieldKey``;
    optional ``id``, ``dataType``); contacts then carry it as ``{id, value}``."""
    spec = await request.json()
    custom_field = {
        "id": str(spec.get("id") or "cf" + uuid.uuid4().hex[:18]),
        "name": spec["name"],
        "fieldKey": spec.get("fieldKey") or "contact." + spec["name"].lower().replace(" ", "_"),
        "dataType": spec.get("dataType", "TEXT"),
        "model": "contact",
        "locationId": sandbox.location_id,
        "position": len(sandbox.state.ghl_custom_fields),
    }
    sandbox.state.ghl_custom_fields.append(custom_field)
    return JSONResponse(custom_field)


@router.get("/_sandbox/ghl/objects/{key}")
async def ghl_object_records(key: str, sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(list(sandbox.state.object_records.get(key, {}).values()))


@router.post("/_sandbox/ghl/appointments")
async def ghl_new_appointment(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """An appointment GHL knows (G15 answers it), e.g. ``{"id": …, "contactId": …}``."""
    appointment = await request.json()
    sandbox.state.appointments[str(appointment["id"])] = appointment
    return JSONResponse(appointment)


@router.get("/_sandbox/ghl/conversations")
async def ghl_conversations(sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(
        {"conversations": list(sandbox.state.conversations.values()), "messages": list(sandbox.state.messages.values())}
    )


@router.post("/_sandbox/rate-limit")
async def set_rate_limit(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """``{"per_10s": N, "window_s": 10, "per_day": M, "enforce": true}``: GHL's limits from now
    on; ``enforce: false`` lifts them while the ``X-RateLimit-*`` headers still count."""
    spec = await request.json()
    per_day = spec.get("per_day")
    sandbox.limiter.configure(
        int(spec["per_10s"]),
        float(spec.get("window_s", 10)),
        per_day=None if per_day is None else int(per_day),
        enforce=bool(spec.get("enforce", True)),
    )
    return JSONResponse({"ok": True})
