"""What one sandbox app holds: the vendors' stores, the request log, injected faults, GHL's
rate limiter, credentials, and the :class:`Sandbox` that bundles them for the routers.

Nothing here is module-level: every :func:`services.sandbox.app.create_sandbox_app` builds its
own :class:`Sandbox` and puts it on ``app.state``; routers reach it through :data:`SandboxDep`,
so two sandbox apps in one process never share a contact, a fault or a rate window.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi import Depends, Request
from pydantic import SecretStr

from services.infra.settings import Settings
from services.infra.signing import load_private_key
from services.sandbox.openapi_check import GhlOpenApi
from services.sandbox.webhooks import WebhookEmitter

__all__ = [
    "Credentials",
    "Fault",
    "FaultBook",
    "RateLimiter",
    "RequestLog",
    "Sandbox",
    "SandboxDep",
    "SandboxState",
    "sandbox_of",
]

CLERK_SERVICE_USER = "user_sandbox_service"
DEFAULT_LOCATION = "sandbox-location"


@dataclass
class Fault:
    """An injected failure for the next ``count`` matching calls."""

    vendor: str
    count: int
    status: int | None = None
    latency_ms: int = 0
    path_contains: str = ""
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # the vendor performs the request, then answers ``status``: a write whose response is lost
    after: bool = False


class FaultBook:
    """Faults injected through ``/_sandbox/faults``, consumed by the calls they match."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    async def take(self, vendor: str, path: str) -> Fault | None:
        """Consume the first live fault for this call; waits out its latency. A latency-only
        fault is consumed too but answers ``None`` (the call then proceeds normally)."""
        for fault in self._faults:
            if fault.vendor == vendor and fault.path_contains in path and fault.count > 0:
                fault.count -= 1
                if fault.latency_ms:
                    await asyncio.sleep(fault.latency_ms / 1000)
                return fault if fault.status else None
        return None


class RequestLog:
    """Every call the fakes answered, as ``GET /_sandbox/calls`` lists them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._calls: list[dict[str, Any]] = []
        self._clock = clock

    def record(
        self,
        vendor: str,
        method: str,
        path: str,
        status: int,
        body: Any,
        query: dict[str, str],
        traceparent: str | None,
    ) -> None:
        self._calls.append(
            {
                "vendor": vendor,
                "method": method,
                "path": path,
                "status": status,
                "body": body,
                "query": query,
                "at": self._clock(),
                "traceparent": traceparent,
            }
        )

    def calls(self, vendor: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self._calls if vendor in (None, c["vendor"])]

    def clear(self) -> None:
        self._calls.clear()


class RateLimiter:
    """GHL's limits per location: a sliding window (100 requests / 10 s unless configured) and
    a daily quota (200,000), with the ``X-RateLimit-*`` headers the real API sends on every
    answer (reference/ghl/docs/oauth/Authorization.md). ``enforce=False`` lifts the limits
    (nothing is refused) while the headers still count what was sent. A refused request is not
    counted; GHL documents no ``Retry-After``, so none is sent (a 429 says ``Remaining: 0``)."""

    def __init__(
        self,
        limit: int = 100,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        per_day: int = 200_000,
        enforce: bool = True,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.per_day = per_day
        self.enforce = enforce
        self._clock = clock
        self._windows: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._days: dict[str, tuple[int, int]] = {}  # location → (day number, requests that day)

    def configure(self, limit: int, window_s: float, *, per_day: int | None = None, enforce: bool = True) -> None:
        """GHL's limits from now on (``per_day`` None: as it was); ``enforce=False`` lifts them."""
        self.limit, self.window_s, self.enforce = limit, window_s, enforce
        if per_day is not None:
            self.per_day = per_day

    def forget(self) -> None:
        """Drop every window and day count (the configured limits stay)."""
        self._windows.clear()
        self._days.clear()

    def admit(self, location: str) -> bool:
        """Count a request against ``location`` unless its window or its day is full."""
        window = self._live(location)
        today = self._today(location)
        if self.enforce and (len(window) >= self.limit or today >= self.per_day):
            return False
        window.append(self._clock())
        self._days[location] = (self._day(), today + 1)
        return True

    def headers(self, location: str) -> dict[str, str]:
        """What GHL says about ``location``'s limits after the request just answered."""
        window = self._live(location)
        return {
            "X-RateLimit-Limit-Daily": str(self.per_day),
            "X-RateLimit-Daily-Remaining": str(max(0, self.per_day - self._today(location))),
            "X-RateLimit-Interval-Milliseconds": str(int(self.window_s * 1000)),
            "X-RateLimit-Max": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - len(window))),
        }

    def _live(self, location: str) -> collections.deque[float]:
        window = self._windows[location]
        now = self._clock()
        while window and window[0] <= now - self.window_s:
            window.popleft()
        return window

    def _day(self) -> int:
        return int(self._clock() // 86_400)

    def _today(self, location: str) -> int:
        day, count = self._days.get(location, (self._day(), 0))
        return count if day == self._day() else 0


@dataclass
class SandboxState:
    """The vendors' records; replaced by ``POST /_sandbox/reset``."""

    ghl_contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ghl_notes: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: collections.defaultdict(list))
    aloware_contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    aloware_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7_100_001))
    verity_messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    verity_forwards: list[dict[str, Any]] = field(default_factory=list)
    clerk_minted: list[str] = field(default_factory=list)
    clerk_revoked: set[str] = field(default_factory=set)
    clerk_reject_all: bool = False
    oauth_access: set[str] = field(default_factory=set)
    oauth_refresh: str | None = None
    oauth_expires_in: int = 86_399
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    aloware_lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    object_records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sequences: dict[str, str] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)
    ghl_custom_fields: list[dict[str, Any]] = field(default_factory=list)
    # per location, what ``PUT /locations/{id}`` set in ``settings`` (``allowDuplicateContact``
    # decides whether POST /contacts/ refuses a duplicate and how /contacts/upsert matches);
    # a location never set has GHL's default, duplicates refused
    ghl_location_settings: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Credentials:
    """What the fakes accept: the configured secrets, or the sandbox defaults when unset."""

    ghl_token: str
    aloware_token: str
    verity_key: str
    clerk_secret: str
    clerk_user: str
    oauth_client: tuple[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        def secret(value: SecretStr | None, default: str) -> str:
            return value.get_secret_value() if value else default

        return cls(
            ghl_token=secret(settings.ghl_api_key, "sandbox-ghl-key"),
            aloware_token=secret(settings.aloware_api_token, "sandbox-aloware-token"),
            verity_key=secret(settings.verity_api_key, "sandbox-verity-key"),
            clerk_secret=secret(settings.clerk_secret_key, "sandbox-clerk-secret"),
            clerk_user=settings.clerk_service_user_id or CLERK_SERVICE_USER,
            oauth_client=(
                settings.ghl_client_id or "sandbox-client-id",
                secret(settings.ghl_client_secret, "sandbox-client-secret"),
            ),
        )


class Sandbox:
    """One sandbox app's everything: settings, credentials, stores, log, faults, limiter,
    the GHL OpenAPI checker, the Clerk signing key and the webhook emitter."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.credentials = Credentials.from_settings(settings)
        self.location_id = settings.ghl_location_id or DEFAULT_LOCATION
        self.state = SandboxState()
        self.log = RequestLog()
        self.faults = FaultBook()
        self.limiter = RateLimiter()
        self.openapi = GhlOpenApi()
        # the conversation provider GHL knows for this app; ``/_sandbox/ghl/oauth`` changes it
        self.provider_id = settings.ghl_conversation_provider_id or "sandbox-provider"
        self.clerk_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ghl_signing_key: ed25519.Ed25519PrivateKey | None = (
            load_private_key(Path(settings.dfm_ghl_signing_key_file)) if settings.dfm_ghl_signing_key_file else None
        )
        self.webhooks = WebhookEmitter(settings.dfm_sandbox_webhook_url)

    def reset(self) -> None:
        """Fresh stores, log, faults, rate windows and webhook record; the configured limit and
        provider stay."""
        self.state = SandboxState()
        self.log.clear()
        self.faults.clear()
        self.limiter.forget()
        self.webhooks.forget()


async def sandbox_of(request: Request) -> Sandbox:
    """The :class:`Sandbox` of the app serving ``request`` (async: no threadpool hop)."""
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


SandboxDep = Annotated[Sandbox, Depends(sandbox_of)]
