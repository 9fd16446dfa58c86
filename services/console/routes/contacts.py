"""Contacts: look a person up by phone, e-mail, GHL id or Aloware id."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.console.contacts import KINDS, find_contact
from services.console.web import Operator, console_of

router = APIRouter()


@router.get("/contacts", response_class=HTMLResponse)
async def contacts_page(request: Request, session: Operator, kind: str = "phone", q: str = "") -> HTMLResponse:
    console = console_of(request)
    view = None
    if q.strip():
        view = await find_contact(console.engine, console.settings, kind, q, console.aloware)
        await console.audit.record(
            session.operator,
            "contact_lookup",
            client=console.client(request),
            target=f"ghl:{view.mapping['ghl_contact_id']}" if view.mapping else None,
            detail={"kind": kind},
        )
    return console.page(request, "contacts.html", {"view": view, "kinds": KINDS, "kind": kind, "q": q}, session=session)
