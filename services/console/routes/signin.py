"""Sign-in and sign-out."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console.auth import FAILED_SIGNIN, UNKNOWN_OPERATOR
from services.console.web import CSRF_FIELD, PRE_SESSION, SESSION_TOKEN, Acting, console_of
from services.infra.logging import get_logger

router = APIRouter()
log = get_logger(__name__)


def _safe_next(target: str | None) -> str:
    """Only a path of this site (never ``//host`` or a scheme): no open redirect."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/overview"


def _form(
    request: Request, error: str | None = None, status_code: int = 200, name: str = "", next_path: str | None = None
) -> HTMLResponse:
    console = console_of(request)
    if not request.session.get(PRE_SESSION):
        request.session[PRE_SESSION] = secrets.token_urlsafe(24)
    return console.page(
        request,
        "signin.html",
        {
            "error": error,
            "name": name,
            "next": _safe_next(next_path),
            "first_start": console.credentials.first_start,
            "configured": bool(console.credentials.operators or console.credentials.admin_secret),
        },
        status_code=status_code,
    )


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _form(request, next_path=next)


@router.post("/signin", response_class=HTMLResponse)
async def signin(
    request: Request,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/overview",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
) -> Response:
    console = console_of(request)
    expected = request.session.get(PRE_SESSION)
    if not expected or not secrets.compare_digest(str(expected), csrf_token):
        return _form(request, "the sign-in form expired: try again", 403, username, next)
    client = console.client(request)
    name = username.strip()
    known = console.credentials.known(name)
    if await console.throttle.refused(client, name if known else None):
        log.warning("console_signin_throttled", client=client, operator=name if known else UNKNOWN_OPERATOR)
        await console.audit.record(name if known else UNKNOWN_OPERATOR, "signin_throttled", client=client)
        return _form(request, "too many failed sign-ins: wait 15 minutes and try again", 429, name, next)
    # scrypt takes ~0.1 s of CPU: off the event loop, so other requests keep moving
    if not await asyncio.to_thread(console.credentials.check, name, password):
        operator = name if known else UNKNOWN_OPERATOR
        await console.audit.record(operator, FAILED_SIGNIN, client=client)
        log.warning("console_signin_failed", client=client, operator=operator)
        return _form(request, "wrong name or password", 401, name, next)
    token = await console.sessions.open(name, client)
    request.session.clear()
    request.session[SESSION_TOKEN] = token
    await console.audit.record(name, "signin", client=client)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/signout")
async def signout(request: Request, session: Acting) -> Response:
    console = console_of(request)
    await console.sessions.close(session.id)
    await console.audit.record(session.operator, "signout", client=console.client(request))
    request.session.clear()
    return RedirectResponse("/signin", status_code=303)
