"""The GHL Marketplace install callback (spec/outbound.md OA-7): ``GET /leadconnector/oauth``.

GHL redirects the installer here with ``code`` (and our ``state``); the code is exchanged
for the location's tokens, which are stored encrypted. Answers are JSON; nothing secret is
echoed back.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clients.ghl_oauth import GhlOAuth
from services.common.errors import Permanent, RetryLater
from services.common.logging import get_logger
from services.common.settings import Settings

log = get_logger(__name__)


class InstallFailed(BaseModel):
    success: Literal[False]
    error: str
    errorDescription: str | None = None  # noqa: N815 - the API's field name


class Installed(BaseModel):
    success: Literal[True]
    message: str
    locationId: str  # noqa: N815


def oauth_router(settings: Settings, engine: AsyncEngine) -> APIRouter:
    router = APIRouter()

    @router.get("/leadconnector/oauth", summary="GHL Marketplace install callback", response_model=Installed,
                responses={400: {"model": InstallFailed, "description": "GHL sent an error, or no code"},
                           500: {"model": InstallFailed, "description": "missing_credentials, "
                                 "token_exchange_failed or processing_error (spec OA-7)"}})
    async def install(code: str | None = None, state: str | None = None, error: str | None = None,
                      error_description: str | None = None) -> JSONResponse:
        if error:
            return JSONResponse({"success": False, "error": error, "errorDescription": error_description},
                                status_code=400)
        if not code:
            return JSONResponse({"success": False, "error": "missing_code"}, status_code=400)
        if not settings.ghl_client_id or settings.ghl_client_secret is None:
            return JSONResponse({"success": False, "error": "missing_credentials"}, status_code=500)
        oauth = GhlOAuth(settings, engine)
        try:
            installed = await oauth.install(code, state)
        except (Permanent, RetryLater) as exc:
            log.error("ghl_oauth_install_failed", error=str(exc))
            return JSONResponse({"success": False, "error": "token_exchange_failed"}, status_code=500)
        except Exception as exc:  # e.g. no location id in the answer: reported, never a crash
            log.error("ghl_oauth_install_failed", error=type(exc).__name__)
            return JSONResponse({"success": False, "error": "processing_error"}, status_code=500)
        finally:
            await oauth.aclose()
        return JSONResponse({"success": True, "message": "Installation complete",
                             "locationId": installed.location_id})

    return router
