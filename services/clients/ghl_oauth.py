"""GHL Marketplace OAuth tokens per location (spec/outbound.md §2.2, rules OA-1…OA-7).

Tokens live in ``ghl_oauth_tokens`` encrypted with Fernet (``DFM_TOKEN_KEY``; several
comma-separated keys allowed, the first encrypts, all decrypt, so keys can rotate). A token
due within five minutes is refreshed under ``SELECT … FOR UPDATE`` on its row, re-checking
after the lock: GHL rotates refresh tokens, so two refreshes at once would break the
installation — with any number of workers exactly one calls the token endpoint. A 400/401
from the token endpoint (OA-6) marks the installation ``needs_reinstall`` and fails dependent
work permanently instead of retrying into a storm; the mark is written on the connection
that holds the row lock and committed before the error is raised (written from a second
connection it waited for that very lock for ever: security-audit F2), so the workers queued
behind the lock see it at once and fail without calling GHL, and the install callback, which
upserts the same row, is not blocked.

Installs (OA-7, security-audit F12): the location is taken only from GHL's token response
and must be one this deployment serves (``allowed_locations``), so someone holding an
authorization code for their own location cannot replace our location's tokens. The
callback accepts a code only with a ``state`` we signed (``sign_state``) within
``GHL_OAUTH_STATE_TTL_S``, unless ``GHL_OAUTH_ALLOW_INSTALL_WITHOUT_STATE`` admits installs
started from the Marketplace, which carry none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clients.http import VendorHttp, parse_body
from services.infra.db.models import GhlOauthTokenRow
from services.infra.errors import Permanent, RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)
REFRESH_MARGIN = timedelta(minutes=5)
DEFAULT_EXPIRES_IN_S = 86_399
STATE_FUTURE_SKEW_S = 60  # clocks of the ingress replicas that sign and verify may differ a little


class TokenCipher:
    """Fernet encryption of tokens at rest, with key rotation."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise Permanent("DFM_TOKEN_KEY is not set: OAuth tokens cannot be stored encrypted")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCipher:
        return cls([k.get_secret_value().strip() for k in settings.dfm_token_key])

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str) -> str:
        try:
            return self._fernet.decrypt(value.encode()).decode()
        except InvalidToken:
            raise Permanent("stored OAuth token cannot be decrypted with DFM_TOKEN_KEY") from None


class TokenRefused(Permanent):
    """The token endpoint answered 400/401 (``invalid_grant``, ``invalid_client``…): the
    grant is spent or revoked, and only a reinstall (a new authorization code) helps."""

    def __init__(self, error: str) -> None:
        super().__init__(f"GHL token endpoint refused: {error}")
        self.error = error


class LocationNotAllowed(Permanent):
    """The token response names no location, or one this deployment does not serve: the
    tokens are dropped and nothing is stored."""

    def __init__(self, location_id: str | None) -> None:
        super().__init__(f"the token response is for location {location_id or '(none)'}, not an allowed one")
        self.location_id = location_id


StateProblem = Literal["missing_state", "invalid_state", "expired_state"]


class InvalidState(Exception):
    """The callback's ``state`` is absent, not signed by us, or too old (answered 400)."""

    def __init__(self, reason: StateProblem) -> None:
        super().__init__(reason)
        self.reason: StateProblem = reason


@dataclass(frozen=True)
class Installation:
    location_id: str
    company_id: str | None


def allowed_locations(settings: Settings) -> list[str]:
    """The locations whose tokens an install may store: ``GHL_OAUTH_ALLOWED_LOCATIONS``, else
    ``GHL_LOCATION_ID``, else none (then no install is possible: the app is not configured)."""
    if settings.ghl_oauth_allowed_locations:
        return list(settings.ghl_oauth_allowed_locations)
    return [settings.ghl_location_id] if settings.ghl_location_id else []


def _state_key(settings: Settings) -> bytes:
    """``GHL_OAUTH_STATE_KEY``, else a key derived from ``GHL_CLIENT_SECRET`` (never the
    secret itself: a state is public)."""
    if settings.ghl_oauth_state_key is not None:
        return settings.ghl_oauth_state_key.get_secret_value().encode()
    if settings.ghl_client_secret is None:
        raise Permanent("GHL_OAUTH_STATE_KEY or GHL_CLIENT_SECRET is needed to sign install states")
    return hmac.new(
        settings.ghl_client_secret.get_secret_value().encode(), b"dfm-ghl-oauth-state-key", hashlib.sha256
    ).digest()


def _state_mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, b"dfm-ghl-install:" + payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_state(settings: Settings, *, now: float | None = None) -> str:
    """A ``state`` for an install we start: ``<unix time>.<nonce>.<HMAC>``. ``dfm up``, the
    bench and the tests sign one the same way before calling the callback."""
    payload = f"{int(time.time() if now is None else now)}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_state_mac(_state_key(settings), payload)}"


def verify_state(settings: Settings, state: str | None, *, now: float | None = None) -> None:
    """Raise ``InvalidState`` unless ``state`` is one of ours, signed at most
    ``GHL_OAUTH_STATE_TTL_S`` ago. The signature is checked first, so a forged state is
    ``invalid_state`` whatever time it claims."""
    if not state:
        raise InvalidState("missing_state")
    issued, _, rest = state.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (issued.isdigit() and nonce and mac):
        raise InvalidState("invalid_state")
    expected = _state_mac(_state_key(settings), f"{issued}.{nonce}")
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise InvalidState("invalid_state")
    age = (time.time() if now is None else now) - int(issued)
    if age < -STATE_FUTURE_SKEW_S:
        raise InvalidState("invalid_state")
    if age > settings.ghl_oauth_state_ttl_s:
        raise InvalidState("expired_state")


def redirect_uri(settings: Settings) -> str | None:
    """Where GHL sends the installer back: ``GHL_OAUTH_REDIRECT_URI``, else ``BASE_URL``'s
    callback path."""
    if settings.ghl_oauth_redirect_uri:
        return settings.ghl_oauth_redirect_uri
    return f"{settings.base_url.rstrip('/')}/leadconnector/oauth" if settings.base_url else None


def install_url(settings: Settings, state: str) -> str:
    """GHL's location chooser for our app, carrying ``state`` (reference/ghl/docs/oauth/
    Authorization.md §3)."""
    query = {
        "response_type": "code",
        "redirect_uri": redirect_uri(settings) or "",
        "client_id": settings.ghl_client_id or "",
        "scope": settings.ghl_oauth_scopes,
        "state": state,
    }
    return f"{settings.ghl_oauth_authorize_url}?{urlencode(query)}"


@dataclass(frozen=True)
class _Cached:
    token: str
    expires_at: datetime
    read_at: float  # GhlOAuth.clock() when it came from the database


class GhlOAuth:
    """Location access tokens: read, refresh once under a row lock, install by code.

    A token is kept in the process with its expiry, so a GHL call costs no database read and no
    decryption (issue #18: CPU per event). It is read again after ``CACHE_S`` — another replica's
    refresh, a reinstall or a ``needs_reinstall`` mark is seen within a minute — and at once when
    it enters the refresh margin or GHL rejects it (``refresh``, OA-5)."""

    CACHE_S = 60.0

    def __init__(self, settings: Settings, engine: AsyncEngine, http: VendorHttp | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.http = http or VendorHttp("ghl", settings.ghl_base_url)
        self._cipher: TokenCipher | None = None
        self._cache: dict[str, _Cached] = {}

    def clock(self) -> float:
        """Monotonic seconds (a method, so a test can move time)."""
        return time.monotonic()

    @property
    def cipher(self) -> TokenCipher:
        if self._cipher is None:
            self._cipher = TokenCipher.from_settings(self.settings)
        return self._cipher

    async def aclose(self) -> None:
        await self.http.aclose()

    async def access_token(self, location_id: str) -> str:
        """OA-2: the location's token, refreshed first when it expires within 5 minutes."""
        location_id = location_id.strip()
        cached = self._cache.get(location_id)
        if (
            cached is not None
            and self.clock() - cached.read_at < self.CACHE_S
            and cached.expires_at - datetime.now(UTC) > REFRESH_MARGIN
        ):
            return cached.token
        self._cache.pop(location_id, None)
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(GhlOauthTokenRow).where(GhlOauthTokenRow.location_id == location_id))
            ).first()
        row = self._usable(row, location_id)
        if row.expires_at - datetime.now(UTC) <= REFRESH_MARGIN:
            return await self.refresh(location_id)
        return self._keep(location_id, self.cipher.decrypt(row.access_token), row.expires_at)

    def _keep(self, location_id: str, token: str, expires_at: datetime) -> str:
        self._cache[location_id] = _Cached(token, expires_at, self.clock())
        return token

    async def refresh(self, location_id: str, *, rejected: str | None = None) -> str:
        """OA-3/OA-4 under the row lock. ``rejected`` is a token GHL just answered 401 to
        (OA-5): refresh unless another worker already replaced it."""
        self._cache.pop(location_id, None)
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(GhlOauthTokenRow).where(GhlOauthTokenRow.location_id == location_id).with_for_update()
                )
            ).first()
            row = self._usable(row, location_id)
            current = self.cipher.decrypt(row.access_token)
            fresh = row.expires_at - datetime.now(UTC) > REFRESH_MARGIN
            if fresh and (rejected is None or rejected != current):
                return self._keep(location_id, current, row.expires_at)
            if not row.refresh_token:
                raise Permanent(f"No refresh token for location {location_id}; install the Marketplace App again")
            refused: TokenRefused | None = None
            try:
                data = await self._token_call(
                    {"grant_type": "refresh_token", "refresh_token": self.cipher.decrypt(row.refresh_token)}
                )
            except TokenRefused as exc:  # OA-6, under this lock and committed with this block
                refused = exc
                await conn.execute(
                    update(GhlOauthTokenRow)
                    .where(GhlOauthTokenRow.id == row.id)
                    .values(needs_reinstall=True, last_refresh_error=exc.error[:500], updated_at=datetime.now(UTC))
                )
            else:
                values = self._row_values(data, keep_refresh=row.refresh_token)
                await conn.execute(update(GhlOauthTokenRow).where(GhlOauthTokenRow.id == row.id).values(**values))
        if refused is not None:
            log.error("ghl_oauth_needs_reinstall", location_id=location_id, error=refused.error[:200])
            raise Permanent(
                f"OAuth installation of location {location_id} needs a reinstall "
                f"(refresh refused: {refused.error[:200]})"
            ) from refused
        log.info("ghl_oauth_refreshed", location_id=location_id)
        return self._keep(location_id, str(data["access_token"]), values["expires_at"])

    async def install(self, code: str) -> Installation:
        """OA-7: exchange an authorization code and store the location's tokens, when GHL's
        answer names an allowed location (``LocationNotAllowed`` otherwise; nothing stored).
        The spec's fallback to ``state`` for the location is gone: ``state`` is the caller's
        to choose, so it let anyone pick whose row their tokens overwrite."""
        form = {"grant_type": "authorization_code", "code": code}
        if self.settings.ghl_oauth_redirect_uri:
            form["redirect_uri"] = self.settings.ghl_oauth_redirect_uri
        data = await self._token_call(form)
        location_id = str(data.get("locationId") or data.get("location_id") or "").strip()
        if location_id not in allowed_locations(self.settings):
            log.warning("ghl_oauth_install_location_refused", location_id=location_id or None)
            raise LocationNotAllowed(location_id or None)
        values = self._row_values(data, keep_refresh=None)
        async with self.engine.begin() as conn:
            await conn.execute(
                pg_insert(GhlOauthTokenRow)
                .values(location_id=location_id, **values)
                .on_conflict_do_update(index_elements=["location_id"], set_=values)
            )
        log.info("ghl_oauth_installed", location_id=location_id)
        return Installation(location_id, data.get("companyId"))

    # --- internals -------------------------------------------------------------------------
    def _usable(self, row: Any, location_id: str) -> Any:
        """The token row, unless it is missing or needs a reinstall (Permanent: OA-2, OA-6)."""
        if row is None:
            raise Permanent(f"No OAuth token for location {location_id}; install the Marketplace App")
        if row.needs_reinstall:
            raise Permanent(
                f"OAuth installation of location {location_id} needs a reinstall "
                f"({row.last_refresh_error or 'refresh refused'})"
            )
        return row

    async def _token_call(self, form: dict[str, str]) -> dict[str, Any]:
        """``POST /oauth/token``; ``TokenRefused`` on 400/401. No database work here: the
        caller may hold the token row's lock."""
        client_id, secret = self.settings.ghl_client_id, self.settings.ghl_client_secret
        if not client_id or secret is None:
            raise Permanent("GHL_CLIENT_ID / GHL_CLIENT_SECRET are not set")
        body = {"client_id": client_id, "client_secret": secret.get_secret_value(), "user_type": "Location", **form}
        response = await self.http.request(
            "POST",
            "/oauth/token",
            "oauth.token",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            ok=(200, 201),
            passthrough=(400, 401),
        )
        if response.status_code in (400, 401):
            error = parse_body(response)
            raise TokenRefused(str(error.get("error", error) if isinstance(error, dict) else error))
        data = response.json()
        if not isinstance(data, dict) or not data.get("access_token"):
            raise RetryLater(None, "GHL token endpoint answered without an access token")
        return data

    def _row_values(self, data: dict[str, Any], *, keep_refresh: str | None) -> dict[str, Any]:
        expires_in = int(data.get("expires_in") or DEFAULT_EXPIRES_IN_S)
        refresh = data.get("refresh_token")
        return {
            "access_token": self.cipher.encrypt(str(data["access_token"])),
            "refresh_token": self.cipher.encrypt(str(refresh)) if refresh else keep_refresh,
            "token_type": data.get("token_type") or "Bearer",
            "scope": data.get("scope"),
            "expires_at": datetime.now(UTC) + timedelta(seconds=expires_in),
            "updated_at": datetime.now(UTC),
            "company_id": data.get("companyId"),
            "user_type": data.get("userType"),
            "needs_reinstall": False,
            "last_refresh_error": None,
        }


def new_key() -> str:
    """A fresh ``DFM_TOKEN_KEY`` value (dev stacks generate one)."""
    return Fernet.generate_key().decode()


__all__ = [
    "GhlOAuth",
    "Installation",
    "InvalidState",
    "LocationNotAllowed",
    "TokenCipher",
    "TokenRefused",
    "allowed_locations",
    "install_url",
    "new_key",
    "redirect_uri",
    "sign_state",
    "verify_state",
]
