"""What every console route shares: the collaborators (one database engine, the NATS command
bus, the audit trail, sessions, the sign-in throttle, the templates) and the two guards,
``signed_in`` (a live session, else sign-in) and ``csrf_checked`` (the session's token on every
state-changing request)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clients.aloware import AlowareClient
from services.console.audit import AuditTrail
from services.console.auth import Credentials, Session, SessionStore, SignInThrottle, client_address
from services.console.bus import CommandBus
from services.infra.settings import Settings

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Console",
    "CsrfRefused",
    "NotSignedIn",
    "Operator",
    "csrf_checked",
    "signed_in",
]

TEMPLATES = Path(__file__).parent / "templates"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TOKEN = "t"
PRE_SESSION = "pre"  # the sign-in form's own CSRF token, before there is a session


def _when(value: Any) -> str:
    """A time as the pages show it: UTC, to the second."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


@dataclass
class Console:
    """The console's collaborators, built once by ``create_console_app``."""

    settings: Settings
    engine: AsyncEngine
    bus: CommandBus
    audit: AuditTrail
    sessions: SessionStore
    throttle: SignInThrottle
    credentials: Credentials
    templates: Jinja2Templates
    aloware: AlowareClient | None = None

    @staticmethod
    def make_templates() -> Jinja2Templates:
        templates = Jinja2Templates(directory=str(TEMPLATES))
        templates.env.filters["when"] = _when
        templates.env.globals["csrf_field"] = CSRF_FIELD
        return templates

    def client(self, request: Request) -> str:
        return client_address(request, self.settings.console_trusted_proxies)

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        status_code: int = 200,
        session: Session | None = None,
    ) -> HTMLResponse:
        """Render template ``name`` with the operator and the CSRF token of ``session``."""
        full = {
            "session": session,
            "csrf": session.csrf if session else request.session.get(PRE_SESSION, ""),
            **context,
        }
        return self.templates.TemplateResponse(request, name, full, status_code=status_code)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


class NotSignedIn(Exception):
    """No live session: pages redirect to sign-in, everything else answers 401."""


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token: 403."""


async def signed_in(request: Request) -> Session:
    """The operator's live session, else ``NotSignedIn``."""
    token = request.session.get(SESSION_TOKEN)
    if not isinstance(token, str) or not token:
        raise NotSignedIn
    session = await console_of(request).sessions.find(token)
    if session is None:
        request.session.pop(SESSION_TOKEN, None)
        raise NotSignedIn
    return session


Operator = Annotated[Session, Depends(signed_in)]


async def csrf_checked(request: Request, session: Operator) -> Session:
    """``session`` when the request carries its CSRF token (header or form field)."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise CsrfRefused
    return session


Acting = Annotated[Session, Depends(csrf_checked)]


def refuse_anonymous(request: Request, _: Exception) -> Response:
    """Pages send the browser to sign-in (coming back afterwards); htmx is told to go there;
    any other request is a plain 401."""
    if request.headers.get("hx-request"):
        return Response("sign in first", status_code=401, headers={"HX-Redirect": "/signin"})
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Response(status_code=303, headers={"Location": f"/signin?next={quote(target, safe='')}"})
    return Response("sign in first", status_code=401)


def refuse_csrf(_: Request, __: Exception) -> Response:
    return Response("missing or wrong CSRF token: reload the page", status_code=403)
