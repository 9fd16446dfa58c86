"""The sandbox vendors as one ASGI app (`dfm run sandbox`): a router per fake vendor over one
:class:`~services.sandbox.state.Sandbox` of this app's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.infra.settings import Settings
from services.sandbox import admin, aloware, clerk, ghl, verity
from services.sandbox.clerk import CLERK_ISSUER
from services.sandbox.state import Sandbox

__all__ = ["CLERK_ISSUER", "create_sandbox_app"]


def create_sandbox_app(settings: Settings) -> FastAPI:
    """The fakes as one ASGI app: GHL under /ghl, Aloware under /aloware/api/v1, Verity under
    /verity, Clerk under /clerk, the sandbox knobs under /_sandbox."""
    sandbox = Sandbox(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await sandbox.webhooks.start()
        yield
        await sandbox.webhooks.stop()

    app = FastAPI(title="DF-Middleware sandbox vendors", lifespan=lifespan)
    app.state.sandbox = sandbox
    for vendor in (admin, ghl, aloware, verity, clerk):
        app.include_router(vendor.router)
    return app
