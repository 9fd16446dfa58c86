"""Helpers shared by several test modules."""

from __future__ import annotations

import httpx

from services.clients.ghl_oauth import TokenCipher
from services.infra.settings import Settings
from tests.support.jobs_rig import execute, fetch


async def use_up_refresh_token(settings: Settings, sandbox: httpx.AsyncClient, db: str) -> None:
    """Someone else spends our refresh token (GHL rotates it): e.g. a refresh GHL answered
    but whose commit never happened. Ours is now stale, and the access token is due."""
    [row] = await fetch(db, "SELECT refresh_token FROM ghl_oauth_tokens")
    answer = await sandbox.post(
        "/ghl/oauth/token",
        data={
            "client_id": settings.ghl_client_id,
            "client_secret": settings.ghl_client_secret.get_secret_value(),
            "user_type": "Location",
            "grant_type": "refresh_token",
            "refresh_token": TokenCipher.from_settings(settings).decrypt(row["refresh_token"]),
        },
    )
    assert answer.status_code == 200
    await execute(db, "UPDATE ghl_oauth_tokens SET expires_at = now()")


__all__ = ["use_up_refresh_token"]
