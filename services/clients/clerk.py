"""Clerk (spec/outbound.md §2.5): verifying caller tokens in the gateway, and obtaining a
session token Verity accepts for the MCP server.

Verification is networkless per request: RS256 against ``CLERK_JWT_KEY`` (PEM) or the keys
of ``CLERK_JWKS_URL`` (fetched once and cached by PyJWT's client), checking ``exp``/``nbf``
with 5 s leeway, ``iss`` when ``CLERK_JWT_ISSUER`` is set and ``azp`` against
``CLERK_AUTHORIZED_PARTIES`` when that list is set.

Tokens for the MCP server come from the Backend API for the configured service user
(``CLERK_SERVICE_USER_ID``): its most recently active session, then a one-hour session token,
cached for 55 minutes and reused while more than five remain; concurrent callers share one
refresh.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from services.clients.paths import UnsafeSegment, segment
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)
LEEWAY_S = 5
TOKEN_TTL_S = 3300
REUSE_MARGIN_S = 300


class TokenInvalid(Exception):
    """The caller's token does not verify (the message says why, without the token)."""


@dataclass(frozen=True)
class VerifiedUser:
    user_id: str
    claims: dict[str, Any]

    @property
    def is_admin(self) -> bool:
        return self.claims.get("admin") is True


class ClerkVerifier:
    """Verifies Clerk session JWTs without calling Clerk per request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.clerk_jwks_url, cache_keys=True) if settings.clerk_jwks_url else None

    @property
    def configured(self) -> bool:
        return bool(self.settings.clerk_jwt_key or self._jwks)

    async def verify(self, token: str) -> VerifiedUser:
        if self.settings.clerk_jwt_key:
            key: Any = self.settings.clerk_jwt_key.replace("\\n", "\n")
        elif self._jwks is not None:
            try:
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            except jwt.PyJWKClientError as exc:
                raise TokenInvalid(f"signing key not found: {exc}") from None
            except jwt.InvalidTokenError as exc:
                raise TokenInvalid(f"malformed token: {exc}") from None
        else:
            raise TokenInvalid("token verification is not configured (CLERK_JWT_KEY or CLERK_JWKS_URL)")
        options: jwt.types.Options = {"require": ["exp", "sub"], "verify_iss": bool(self.settings.clerk_jwt_issuer)}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                leeway=LEEWAY_S,
                options=options,
                issuer=self.settings.clerk_jwt_issuer or None,
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("token expired") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid("token issuer not accepted") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"token invalid: {type(exc).__name__}") from None
        parties = self.settings.clerk_authorized_parties
        if parties and claims.get("azp") not in parties:
            raise TokenInvalid("token azp not authorized")
        return VerifiedUser(str(claims["sub"]), claims)


class ClerkError(Exception):
    """A session token could not be obtained."""


class ClerkTokenManager:
    """Session tokens for the service user, cached with a single-flight refresh."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        secret = settings.clerk_secret_key.get_secret_value() if settings.clerk_secret_key else ""
        self.client = client or httpx.AsyncClient(
            base_url=settings.clerk_api_url.rstrip("/"), timeout=15, headers={"Authorization": f"Bearer {secret}"}
        )
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self._generation = 0
        self.refreshes = 0

    async def aclose(self) -> None:
        await self.client.aclose()

    def clear(self) -> None:
        """Drop the cached token (an in-flight refresh is not reused afterwards)."""
        self._token, self._expires_at = None, 0.0
        self._generation += 1

    async def token(self) -> str:
        if self._token and self._expires_at - time.monotonic() > REUSE_MARGIN_S:
            return self._token
        generation = self._generation
        async with self._lock:
            if self._token and self._expires_at - time.monotonic() > REUSE_MARGIN_S and generation == self._generation:
                return self._token
            token = await self._mint()
            self._token, self._expires_at = token, time.monotonic() + TOKEN_TTL_S
            self.refreshes += 1
            return token

    async def _mint(self) -> str:
        if not self.settings.clerk_secret_key:
            raise ClerkError("CLERK_SECRET_KEY is not set")
        user_id = self.settings.clerk_service_user_id
        if not user_id:
            raise ClerkError("CLERK_SERVICE_USER_ID is not set")
        try:
            response = await self.client.get("/sessions", params={"user_id": user_id, "status": "active"})
            _raise_for(response, "list sessions")
            sessions = response.json()
            sessions = sessions.get("data", sessions) if isinstance(sessions, dict) else sessions
            active = [s for s in sessions if s.get("status") == "active"]
            if not active:
                raise ClerkError(
                    f"no active Clerk session for service user {user_id}; sign the "
                    "service user in once (sessions cannot be created from the backend)"
                )
            session = max(active, key=lambda s: s.get("last_active_at") or 0)
            try:  # Clerk's answer names the session; it must not name another path
                session_path = f"/sessions/{segment(session.get('id'), 'clerk session id')}/tokens"
            except UnsafeSegment as exc:
                raise ClerkError(exc.reason) from None
            response = await self.client.post(session_path, json={"expires_in_seconds": 3600})
            _raise_for(response, "create session token")
        except httpx.HTTPError as exc:
            raise ClerkError(f"Clerk unreachable: {type(exc).__name__}") from None
        body = response.json()
        token = body.get("jwt") or body.get("token")
        if not token:
            raise ClerkError("Clerk answered without a token")
        log.info("clerk_token_minted", session_id=session["id"])
        return str(token)


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise ClerkError(f"Clerk {what} failed: HTTP {response.status_code}")
