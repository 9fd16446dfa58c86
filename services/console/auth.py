"""Who may use the console: operator credentials, the sign-in throttle and revocable sessions.

Passwords are kept as ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (``dfm console hash-password``) in
``CONSOLE_OPERATORS`` (``name:hash`` pairs); with none configured ``DF_ADMIN_SECRET`` signs in
as ``admin``, so a first start needs nothing new. Failed sign-ins are rows of ``console_audit``,
and the throttle counts them per client address and per operator, so a refusal survives a
restart. A session is a random token in the signed cookie whose SHA-256 names a
``console_sessions`` row: sign-out and the idle timeout end the row, and a copied cookie with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from services.infra.db.models import ConsoleAuditRow, ConsoleSessionRow
from services.infra.settings import ConfigError, Settings
from services.infra.signing import secret_matches

__all__ = [
    "FAILED_SIGNIN",
    "Credentials",
    "Session",
    "SessionStore",
    "SignInThrottle",
    "client_address",
    "hash_password",
    "verify_password",
]

SCHEME = "scrypt"
# 2**15 × 8 × 128 bytes = 32 MiB and about 0.1 s per check: slow for a guesser, fine for a person
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**15, 8, 1, 32
MAX_MEMORY = 64 * 1024 * 1024
FIRST_START_OPERATOR = "admin"  # DF_ADMIN_SECRET's name while CONSOLE_OPERATORS is empty
OPERATOR_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
FAILED_SIGNIN = "signin_failed"
THROTTLE_WINDOW = timedelta(minutes=15)
UNKNOWN_OPERATOR = "(unknown)"  # what a failed sign-in with a name no one has is recorded as


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The stored form of ``password``: scrypt with a random 16-byte salt."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY, dklen=KEY_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(key)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, key = encoded.split("$")
    if scheme != SCHEME:
        raise ValueError(f"not an {SCHEME} hash")
    values = int(n), int(r), int(p)
    if not (
        2 <= values[0] <= 2**20 and values[0] & (values[0] - 1) == 0 and 1 <= values[1] <= 32 and 1 <= values[2] <= 16
    ):
        raise ValueError("scrypt parameters out of range")
    return *values, _unb64(salt), _unb64(key)


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` hashes to ``encoded`` (compared in constant time)."""
    try:
        n, r, p, salt, key = _parse(encoded)
    except ValueError:
        return False
    given = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY, dklen=len(key))
    return hmac.compare_digest(given, key)


# a hash no password matches, checked for unknown names so they take as long as known ones
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Credentials:
    """The operators who may sign in, from the settings."""

    operators: dict[str, str]
    admin_secret: tuple[SecretStr, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """Parse ``CONSOLE_OPERATORS``; a malformed entry is a ``ConfigError`` naming it (never
        its hash)."""
        operators: dict[str, str] = {}
        for number, entry in enumerate(settings.console_operators, 1):
            name, sep, encoded = entry.partition(":")
            if not sep or not OPERATOR_NAME.match(name):
                raise ConfigError(
                    f"CONSOLE_OPERATORS is malformed: entry {number} is not name:hash with a name "
                    "of letters, digits and ._@-"
                )
            try:
                _parse(encoded)
            except ValueError:
                raise ConfigError(
                    f"CONSOLE_OPERATORS is malformed: the hash of {name} is not what `dfm console hash-password` prints"
                ) from None
            operators[name] = encoded
        return cls(operators, tuple(settings.df_admin_secret))

    @property
    def first_start(self) -> bool:
        """No operators configured: the admin secret signs in as ``admin``."""
        return not self.operators

    def known(self, name: str) -> bool:
        return name in self.operators or (self.first_start and name == FIRST_START_OPERATOR)

    def check(self, name: str, password: str) -> bool:
        """True for a right name and password. Unknown names cost one scrypt like known ones."""
        if not password:
            return False
        if self.first_start:
            return (
                name == FIRST_START_OPERATOR and bool(self.admin_secret) and secret_matches(password, self.admin_secret)
            )
        encoded = self.operators.get(name)
        matched = verify_password(password, encoded or _DUMMY_HASH)
        return matched and encoded is not None


def client_address(conn: HTTPConnection, trusted: list[str]) -> str:
    """The client's address: the peer, or with a peer in ``trusted`` (CIDRs) the rightmost
    ``X-Forwarded-For`` hop that is not a trusted proxy itself."""
    peer = conn.client.host if conn.client else "unknown"
    networks = [ipaddress.ip_network(c, strict=False) for c in trusted]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    if not networks or not is_trusted(peer):
        return peer
    hops = [h.strip() for h in conn.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return peer


class SignInThrottle:
    """Refuses sign-in for an address or an operator with ``limit`` failures in 15 minutes,
    counted in ``console_audit`` (so every replica and a restarted process agree)."""

    def __init__(self, engine: AsyncEngine, limit: int) -> None:
        self.engine = engine
        self.limit = limit

    async def refused(self, client: str, operator: str | None, now: datetime | None = None) -> bool:
        since = (now or datetime.now(UTC)) - THROTTLE_WINDOW
        recent = (ConsoleAuditRow.action == FAILED_SIGNIN, ConsoleAuditRow.at >= since)
        async with self.engine.connect() as conn:
            by_client = await conn.scalar(select(func.count()).where(*recent, ConsoleAuditRow.client == client))
            if int(by_client or 0) >= self.limit:
                return True
            if operator is None:
                return False
            by_operator = await conn.scalar(select(func.count()).where(*recent, ConsoleAuditRow.operator == operator))
        return int(by_operator or 0) >= self.limit


@dataclass(frozen=True)
class Session:
    """A signed-in operator, as the request found it."""

    id: str
    operator: str
    csrf: str


class SessionStore:
    """Sessions in ``console_sessions``; the cookie holds the token, the table its hash."""

    def __init__(self, engine: AsyncEngine, settings: Settings, signing_key: bytes) -> None:
        self.engine = engine
        self.idle = timedelta(seconds=settings.console_idle_timeout_s)
        self.max_age = timedelta(seconds=settings.console_session_max_age_s)
        self.key = signing_key

    @staticmethod
    def _id(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def csrf_for(self, token: str) -> str:
        """The session's CSRF token: derived, so nothing more is stored, and useless without the key."""
        return hmac.new(self.key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()

    async def open(self, operator: str, client: str) -> str:
        """A new session; returns the token for the cookie."""
        token = secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await conn.execute(insert(ConsoleSessionRow).values(id=self._id(token), operator=operator, client=client))
        return token

    async def find(self, token: str, now: datetime | None = None) -> Session | None:
        """The live session of ``token`` (its last use refreshed), or None: unknown, signed out,
        idle longer than the timeout, or older than the maximum age (then it is ended)."""
        now = now or datetime.now(UTC)
        ident = self._id(token)
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(ConsoleSessionRow).where(ConsoleSessionRow.id == ident))).first()
            if row is None or row.ended_at is not None:
                return None
            if now - row.last_seen_at > self.idle or now - row.created_at > self.max_age:
                await conn.execute(update(ConsoleSessionRow).where(ConsoleSessionRow.id == ident).values(ended_at=now))
                return None
            if now - row.last_seen_at > timedelta(seconds=5):  # a page and its polls: one write
                await conn.execute(
                    update(ConsoleSessionRow).where(ConsoleSessionRow.id == ident).values(last_seen_at=now)
                )
        return Session(ident, row.operator, self.csrf_for(token))

    async def close(self, session_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ConsoleSessionRow)
                .where(ConsoleSessionRow.id == session_id, ConsoleSessionRow.ended_at.is_(None))
                .values(ended_at=func.now())
            )
