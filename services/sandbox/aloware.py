"""The fake Aloware under ``/aloware/api/v1``: checks ``api_token``, honours injected faults,
keeps contacts, power-dialer lists and sequence enrolments, and after a contact write sends
Aloware's webhook (HTTP Basic, as the real sender) to the ingress. Its sandbox knobs live
under ``/_sandbox/aloware``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from contracts.phone import to_e164
from services.infra.signing import basic_auth
from services.sandbox.state import Sandbox, SandboxDep

__all__ = ["ALOWARE_FIELDS", "ALOWARE_PREFIX", "router"]

ALOWARE_PREFIX = "/aloware/api/v1"
ALOWARE_FIELDS = ("first_name", "last_name", "name", "email", "timezone", "country", "state",
                  "city", "lead_source", "intake_source")  # fmt: skip
SANDBOX_USERS = [{"id": 3100, "name": "Chris Rep", "email": "chris.rep@example.com", "status": 1},
                 {"id": 3200, "name": "Rafi Agent", "email": "rafi.agent@example.com", "status": 1}]  # fmt: skip

Answer = tuple[int, Any]
Handler = Callable[[Sandbox, dict[str, str], dict[str, Any]], Answer]

router = APIRouter()


# --- sandbox knobs -----------------------------------------------------------------------------
@router.post("/_sandbox/aloware/lists")
async def aloware_new_list(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Create a power-dialer list by hand, as an Aloware admin would."""
    spec = await request.json()
    list_id = str(next(sandbox.state.aloware_ids))
    sandbox.state.aloware_lists[list_id] = {"id": list_id, "name": spec["name"], "contact_ids": []}
    return JSONResponse(sandbox.state.aloware_lists[list_id])


@router.get("/_sandbox/aloware/sequences")
async def aloware_sequences(sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(sandbox.state.sequences)


@router.get("/_sandbox/aloware/lists")
async def aloware_lists(sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(list(sandbox.state.aloware_lists.values()))


@router.patch("/_sandbox/aloware/contacts/{contact_id}")
async def aloware_edit_silently(contact_id: str, request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Change an Aloware contact without sending its webhook (a webhook Aloware lost)."""
    contact = sandbox.state.aloware_contacts.get(contact_id)
    if contact is None:
        return JSONResponse({"error": "no such contact"}, status_code=404)
    contact.update(await request.json())
    contact["updated_at"] = datetime.now(UTC).isoformat()
    return JSONResponse(contact)


@router.get("/_sandbox/aloware/contacts")
async def aloware_contacts(sandbox: SandboxDep) -> JSONResponse:
    return JSONResponse(list(sandbox.state.aloware_contacts.values()))


# --- the API -----------------------------------------------------------------------------------
@router.api_route(ALOWARE_PREFIX + "/{path:path}", methods=["GET", "POST"])
async def aloware(path: str, request: Request, sandbox: SandboxDep) -> Response:
    method, rel = request.method, "/" + path
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    query = dict(request.query_params)
    status, payload = await _serve(sandbox, method, rel, query, body)
    sandbox.log.record(
        "aloware",
        method,
        rel,
        status,
        {k: v for k, v in body.items() if k != "api_token"},
        {k: v for k, v in query.items() if k != "api_token"},
        request.headers.get("traceparent"),
    )
    return JSONResponse(payload, status_code=status)


async def _serve(sandbox: Sandbox, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Answer:
    token = query.get("api_token") if method == "GET" else body.get("api_token")
    if token != sandbox.credentials.aloware_token:
        return 401, {"error": "Unauthenticated."}
    fault = await sandbox.faults.take("aloware", path)
    if fault is not None:
        return fault.status or 500, {"error": "injected"}
    handler = ROUTES.get((method, path))
    if handler is None:
        return 404, {"error": f"sandbox has no {method} {path}"}
    return handler(sandbox, query, body)


def send_aloware_webhook(sandbox: Sandbox, event: str, contact: dict[str, Any]) -> None:
    """Aloware's webhook for ``contact`` (nothing unless the ingress's Basic credentials are set)."""
    user = sandbox.settings.aloware_webhook_basic_user
    passwords = sandbox.settings.aloware_webhook_basic_pass
    if not user or not passwords:
        return
    body = json.dumps({"event": event, "body": contact}).encode()
    sandbox.webhooks.emit(
        "/api/webhooks/aloware", {"authorization": basic_auth(user, passwords[0].get_secret_value())}, body
    )


def _find(sandbox: Sandbox, phone: str) -> dict[str, Any] | None:
    return next((c for c in sandbox.state.aloware_contacts.values() if c.get("phone_number") == phone), None)


# --- contacts ----------------------------------------------------------------------------------
def _contact_by_phone(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    phone = to_e164(query.get("phone_number"))
    if phone is None:
        return 400, {"error": "Phone number is empty or invalid."}
    found = _find(sandbox, phone)
    return (200, found) if found else (404, {"error": "Contact not found."})


def _submit_form(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    """Creates the lead, or with ``force_update`` updates the fields given."""
    phone = to_e164(body.get("phone_number"))
    if phone is None:
        return 400, {"error": "Phone number is empty or invalid."}
    existing = _find(sandbox, phone)
    if existing is None:
        contact = {
            "id": str(next(sandbox.state.aloware_ids)),
            "phone_number": phone,
            "tags": [],
            "is_dnc": False,
            **{k: body[k] for k in ALOWARE_FIELDS if body.get(k)},
            "updated_at": datetime.now(UTC).isoformat(),
        }
        sandbox.state.aloware_contacts[contact["id"]] = contact
        send_aloware_webhook(sandbox, "Contact Created", contact)
        return 200, {"message": "Lead created."}
    if body.get("force_update"):
        changed = False
        for key in ALOWARE_FIELDS:
            if body.get(key) and existing.get(key) != body[key]:
                existing[key] = body[key]
                changed = True
        if changed:
            existing["updated_at"] = datetime.now(UTC).isoformat()
            send_aloware_webhook(sandbox, "Contact Updated", existing)
    return 200, {"message": "Lead updated."}


def _users(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    return 200, [dict(user) for user in SANDBOX_USERS]


# --- power-dialer lists and sequences ----------------------------------------------------------
def _remove_from_lists(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    contact = sandbox.state.aloware_contacts.get(str(body.get("contact_id")))
    if contact is None:
        return 404, {"message": "The contact id does not exist."}
    contact["lists"] = []
    for call_list in sandbox.state.aloware_lists.values():
        call_list["contact_ids"] = [c for c in call_list["contact_ids"] if c != contact["id"]]
    return 200, {"message": "Contact removed from all lists."}


def _add_to_list(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    """Adds contacts in order; an unknown contact stops there (the ones before stay added)."""
    call_list = sandbox.state.aloware_lists.get(str(body.get("list_id")))
    if call_list is None:
        return 400, {"message": "The list id does not exist."}
    for contact_id in body.get("contact_ids") or []:
        if str(contact_id) not in sandbox.state.aloware_contacts:
            return 404, {"message": "The contact id does not exist."}
        if str(contact_id) not in call_list["contact_ids"]:
            call_list["contact_ids"].append(str(contact_id))
    return 200, {"message": "Contacts added to the list."}


def _clear_list(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    call_list = sandbox.state.aloware_lists.get(str(body.get("list_id")))
    if call_list is None:
        return 400, {"message": "The list id does not exist."}
    call_list["contact_ids"] = []
    return 200, {"message": "List cleared."}


def _call_lists(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    return 200, {
        "data": [{"id": int(k), "name": v["name"], "description": None} for k, v in sandbox.state.aloware_lists.items()]
    }


def _enroll(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    phone = to_e164(body.get("phone_number"))
    if not body.get("sequence_id") or phone is None:
        return 400, {"message": "sequence_id and phone_number are required"}
    sandbox.state.sequences[phone] = str(body["sequence_id"])
    return 200, {"message": "Contact enrolled in the sequence."}


def _disenroll(sandbox: Sandbox, query: dict[str, str], body: dict[str, Any]) -> Answer:
    sandbox.state.sequences.pop(to_e164(body.get("phone_number")) or "", None)
    return 200, {"message": "Contact disenrolled."}


ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/webhook/contact/phone-number"): _contact_by_phone,
    ("POST", "/webhook/forms"): _submit_form,
    ("POST", "/webhook/powerdialer-remove-contact-from-lists"): _remove_from_lists,
    ("POST", "/webhook/powerdialer-add-contact-to-lists"): _add_to_list,
    ("POST", "/webhook/powerdialer-clear-list"): _clear_list,
    ("POST", "/webhook/sequence-enroll"): _enroll,
    ("POST", "/webhook/sequence-disenroll"): _disenroll,
    ("GET", "/call-lists"): _call_lists,
    ("GET", "/webhook/users"): _users,
}
