"""The overview: the page and the panel it reloads every few seconds (htmx polling)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from services.console.overview import overview
from services.console.web import Operator, console_of

router = APIRouter()
REFRESH_S = 5


@router.get("/")
async def home(_: Operator) -> RedirectResponse:
    return RedirectResponse("/overview", status_code=303)


async def _context(request: Request, window: str) -> dict[str, object]:
    console = console_of(request)
    data = await overview(console.engine, window)
    return {**data, "lag": await console.bus.consumer_lag(), "refresh_s": REFRESH_S}


@router.get("/overview", response_class=HTMLResponse)
async def overview_page(request: Request, session: Operator, window: str = "hour") -> HTMLResponse:
    return console_of(request).page(request, "overview.html", await _context(request, window), session=session)


@router.get("/overview/panel", response_class=HTMLResponse)
async def overview_panel(request: Request, session: Operator, window: str = "hour") -> HTMLResponse:
    return console_of(request).page(request, "_overview_panel.html", await _context(request, window), session=session)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, session: Operator) -> HTMLResponse:
    console = console_of(request)
    return console.page(request, "audit.html", {"rows": await console.audit.recent(100)}, session=session)
