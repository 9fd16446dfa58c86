"""The console's ASGI app: routers, the signed session cookie, security headers, static files.

The cookie (starlette's ``SessionMiddleware``, signed with ``CONSOLE_SESSION_SECRET`` by
itsdangerous) is HttpOnly, SameSite=Strict and, outside development, Secure; it holds only the
session token (services/console/auth.py). Pages allow scripts, styles and requests from this
origin only (the vendored htmx and CSS), and no framing.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware.sessions import SessionMiddleware

from services.clients.aloware import AlowareClient
from services.console.audit import AuditTrail
from services.console.auth import Credentials, SessionStore, SignInThrottle
from services.console.bus import CommandBus
from services.console.routes import bulk, contacts, events, overview, signin
from services.console.web import Console, CsrfRefused, NotSignedIn, refuse_anonymous, refuse_csrf
from services.infra.db.session import create_engine
from services.infra.logging import get_logger
from services.infra.settings import Settings

__all__ = ["COOKIE", "create_console_app"]

log = get_logger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "dfm_console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def session_key(settings: Settings) -> bytes:
    """``CONSOLE_SESSION_SECRET``, or outside production a random key for this process."""
    if settings.console_session_secret is not None:
        return settings.console_session_secret.get_secret_value().encode()
    settings.refuse_insecure_console()  # production without a secret stops here
    log.warning("console_session_secret_unset", effect="sessions end when the console restarts")
    return secrets.token_bytes(32)


def create_console_app(
    settings: Settings, *, engine: AsyncEngine | None = None, bus: CommandBus | None = None
) -> FastAPI:
    """The console bound to one engine and one command bus (made from ``settings`` when not
    given). Refuses an unsafe production configuration (``Settings.refuse_insecure_console``)."""
    settings.refuse_insecure_console()
    key = session_key(settings)
    engine = engine or create_engine(settings, pool_size=min(settings.db_max_connections, 5))
    bus = bus or CommandBus(settings)
    aloware = AlowareClient.from_settings(settings) if settings.aloware_api_token else None
    console = Console(
        settings=settings,
        engine=engine,
        bus=bus,
        audit=AuditTrail(engine),
        sessions=SessionStore(engine, settings, key),
        throttle=SignInThrottle(engine, settings.console_signin_max_failures),
        credentials=Credentials.from_settings(settings),
        templates=Console.make_templates(),
        aloware=aloware,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        try:
            yield
        finally:
            await bus.close()
            if aloware is not None:
                await aloware.aclose()

    app = FastAPI(title="DF-Middleware console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    for router in (signin.router, overview.router, events.router, bulk.router, contacts.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_exception_handler(NotSignedIn, refuse_anonymous)
    app.add_exception_handler(CsrfRefused, refuse_csrf)

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - health reports any database failure as 503
            return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # outermost: the session is read before any route and written after it
    app.add_middleware(
        SessionMiddleware,
        secret_key=key.decode("latin-1"),
        session_cookie=COOKIE,
        max_age=settings.console_session_max_age_s,
        same_site="strict",
        https_only=settings.node_env != "development",
    )
    return app
