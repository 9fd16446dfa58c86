"""Helpers shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from services.gateway.app import create_app
from services.infra.settings import Settings
from services.sandbox.app import CLERK_ISSUER, create_sandbox_app
from tests.support.ingress_rig import serving

CATALOG = Path(__file__).parents[1] / "fixtures" / "apis" / "verity" / "api_catalog.json"


KEY = {"Authorization": "Bearer gw-key-1"}


def gateway_settings(sandbox: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "df_middleware_api_key": "gw-key-1,gw-key-2",
        "verity_base_url": f"{sandbox}/verity",
        "verity_catalog_path": str(CATALOG),
        "clerk_jwks_url": f"{sandbox}/clerk/.well-known/jwks.json",
        "clerk_jwt_issuer": CLERK_ISSUER,
        "verity_proxy_timeout_s": 1.0,
        "verity_api_key": "sandbox-verity-key",
    }
    return Settings(**{**values, **extra})


@asynccontextmanager
async def stack(**extra: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with serving(create_sandbox_app(Settings()), "/_sandbox/calls") as sandbox_url:
        settings = gateway_settings(sandbox_url, **extra)
        async with (
            serving(create_app(settings), "/health") as gw_url,
            httpx.AsyncClient(base_url=gw_url, timeout=10) as gw,
            httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox,
        ):
            yield gw, sandbox


async def clerk_token(sandbox: httpx.AsyncClient, **claims: Any) -> str:
    if not claims:
        answer = await sandbox.post(
            "/clerk/v1/sessions/sess_sandbox_0001/tokens",
            json={"expires_in_seconds": 60},
            headers={"Authorization": "Bearer sandbox-clerk-secret"},
        )
    else:
        answer = await sandbox.post("/_sandbox/clerk/mint", json=claims)
    return str(answer.json()["jwt"])


async def proxy(gw: httpx.AsyncClient, http_headers: dict[str, str] | None = None, **spec: Any) -> httpx.Response:
    """POST one proxy request; ``headers`` in ``spec`` are the ones for Verity."""
    return await gw.post("/api/verity", json=spec, headers=KEY if http_headers is None else http_headers)


__all__ = ["CATALOG", "KEY", "clerk_token", "gateway_settings", "proxy", "stack"]
