"""The GHL Marketplace install (spec/outbound.md OA-7; security-audit F12).

``GET /leadconnector/oauth/start`` (admin secret) sends the operator to GHL's location
chooser with a ``state`` we signed; GHL redirects the installer to ``GET /leadconnector/oauth``
with ``code`` and that ``state``; the code is exchanged for the location's tokens, stored
encrypted — only when the token response names a location this deployment serves
(``services/clients/ghl_oauth.py``).

Installs started from the Marketplace itself carry no state of ours. They are refused unless
``GHL_OAUTH_ALLOW_INSTALL_WITHOUT_STATE=true``: the allowed-location check alone already keeps
a stranger's code from touching our row, but a state also proves the install was started by
us, so that stays the default. A state that is present is always checked.

Answers (JSON, nothing secret echoed): 200 installed; 400 GHL sent an error, no code, a
missing/forged/expired state, or GHL refused the code; 403 the token is for another location;
429 too many callbacks from the address (``GHL_OAUTH_RATE_LIMIT_MAX`` per 15 minutes: each
one may cost a call to GHL with our client secret); 502 GHL unreachable or answering
nonsense; 503 the app is not configured here. The spec's 500s are gone: none of these is our
bug.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clients.ghl_oauth import (
    GhlOAuth,
    InvalidState,
    LocationNotAllowed,
    TokenRefused,
    allowed_locations,
    install_url,
    redirect_uri,
    sign_state,
    verify_state,
)
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.ingress.admin import GUARDED, admin_guard
from services.ingress.limits import SlidingWindow, client_address

log = get_logger(__name__)


class InstallFailed(BaseModel):
    success: Literal[False]
    error: str
    errorDescription: str | None = None


class Installed(BaseModel):
    success: Literal[True]
    message: str
    locationId: str


class InstallStarted(BaseModel):
    success: Literal[True]
    url: str
    expiresInS: int


def _failed(
    status: int, error: str, description: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": error, "errorDescription": description}, status_code=status, headers=headers
    )


def unconfigured(settings: Settings) -> JSONResponse | None:
    """503 naming what is missing for installs, or None when everything is there."""
    if not settings.ghl_client_id or settings.ghl_client_secret is None:
        return _failed(503, "missing_credentials", "GHL_CLIENT_ID and GHL_CLIENT_SECRET are not set")
    if not settings.dfm_token_key:
        return _failed(503, "not_configured", "DFM_TOKEN_KEY is not set: tokens cannot be stored encrypted")
    if not allowed_locations(settings):
        return _failed(503, "not_configured", "GHL_OAUTH_ALLOWED_LOCATIONS or GHL_LOCATION_ID is not set")
    return None


def oauth_router(settings: Settings, engine: AsyncEngine, admin_failures: SlidingWindow) -> APIRouter:
    router = APIRouter()
    callbacks = SlidingWindow(settings.ghl_oauth_rate_limit_max)
    failure = {"model": InstallFailed}

    @router.get(
        "/leadconnector/oauth",
        summary="GHL Marketplace install callback",
        response_model=Installed,
        responses={
            400: {
                **failure,
                "description": "GHL sent an error, no code, a missing, forged or "
                "expired state, or GHL refused the code (token_exchange_failed)",
            },
            403: {
                **failure,
                "description": "the token is for a location this deployment does not serve (location_not_allowed)",
            },
            429: {**failure, "description": "too many callbacks from this address; see Retry-After"},
            502: {**failure, "description": "GHL unreachable or its answer unusable"},
            503: {**failure, "description": "installs are not configured here"},
        },
    )
    async def install(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> JSONResponse:
        address = client_address(request)
        retry_after = callbacks.retry_after(address)
        if retry_after is not None:
            return _failed(429, "too_many_requests", None, {"Retry-After": str(retry_after)})
        callbacks.hit(address)
        if error:
            return _failed(400, error, error_description)
        if not code:
            return _failed(400, "missing_code")
        refused = unconfigured(settings)
        if refused is not None:
            return refused
        if state is not None or not settings.ghl_oauth_allow_install_without_state:
            try:
                verify_state(settings, state)
            except InvalidState as exc:
                log.warning("ghl_oauth_install_state_refused", reason=exc.reason)
                return _failed(400, exc.reason, "start the install at /leadconnector/oauth/start")
        oauth = GhlOAuth(settings, engine)
        try:
            installed = await oauth.install(code)
        except TokenRefused as exc:  # before Permanent: it is one
            log.warning("ghl_oauth_install_code_refused", error=exc.error[:200])
            return _failed(400, "token_exchange_failed", exc.error[:200])
        except LocationNotAllowed:
            return _failed(403, "location_not_allowed", "the token is for a location this deployment does not serve")
        except RetryLater as exc:
            log.error("ghl_oauth_install_failed", error=str(exc))
            return _failed(502, "ghl_unreachable", "GHL's token endpoint did not answer; try the install again")
        except Permanent as exc:  # another 4xx, or an answer without a token
            log.error("ghl_oauth_install_failed", error=str(exc))
            return _failed(502, "token_exchange_failed", "GHL's token endpoint gave an unexpected answer")
        finally:
            await oauth.aclose()
        return JSONResponse({"success": True, "message": "Installation complete", "locationId": installed.location_id})

    @router.get(
        "/leadconnector/oauth/start",
        summary="start a GHL Marketplace install (redirect to GHL)",
        dependencies=[admin_guard(settings, admin_failures)],
        status_code=302,
        responses={
            302: {
                "model": InstallStarted,
                "description": "to GHL's location chooser (Location header; the same URL in the body)",
            },
            503: {**failure, "description": "installs are not configured here"},
            **GUARDED,
        },
    )
    async def start() -> JSONResponse:
        refused = unconfigured(settings)
        if refused is None and redirect_uri(settings) is None:
            refused = _failed(503, "not_configured", "GHL_OAUTH_REDIRECT_URI or BASE_URL is not set")
        if refused is not None:
            return refused
        url = install_url(settings, sign_state(settings))
        return JSONResponse(
            {"success": True, "url": url, "expiresInS": settings.ghl_oauth_state_ttl_s},
            status_code=302,
            headers={"Location": url},
        )

    return router
