"""The gateway's dependency checks, cheap enough to be public (security-audit F7).

``GET /health`` is unauthenticated and exempt from the rate limit (spec/outbound.md §3.1), so
it must not cost the shared database anything per request: it used to open a new PostgreSQL
connection (TCP + SCRAM) and a new NATS connection for every call, and a flood exhausted
``max_connections`` for every other service. Now the app's one small pool (at most one
connection, shared with the opt-out gate's lookups: gateway/app.py) and one long-lived NATS
connection are reused, the result is kept for ``CACHE_S``, and concurrent requests wait for
the same probe instead of starting their own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.broker import connect
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

CACHE_S = 1.5
PROBE_TIMEOUT_S = 2.0
Check = dict[str, str]


class DependencyProbe:
    """Database and NATS reachability, probed at most once per ``CACHE_S``."""

    def __init__(self, settings: Settings, engine: AsyncEngine | None) -> None:
        """``engine``: the app's (None without ``DATABASE_URL``); the app disposes of it."""
        self.settings = settings
        self.engine = engine
        self._nats: Any = None
        self._nats_task: asyncio.Task[Any] | None = None
        self._result: dict[str, Check] | None = None
        self._at = 0.0
        self._probe: asyncio.Task[dict[str, Check]] | None = None

    async def checks(self) -> dict[str, Check]:
        """The latest result; a new probe only when it is older than ``CACHE_S``, shared by
        everyone asking meanwhile. A caller that goes away does not cancel it (shield)."""
        if self._result is not None and time.monotonic() - self._at < CACHE_S:
            return self._result
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._run())
        return await asyncio.shield(self._probe)

    async def _run(self) -> dict[str, Check]:
        database, nats = await asyncio.gather(self._database(), self._nats_check())
        self._result, self._at = {"database": database, "nats": nats}, time.monotonic()
        return self._result

    async def _database(self) -> Check:
        if self.engine is None:
            return {"status": "warning", "message": "DATABASE_URL is not set"}
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure is reported, never raised  # noqa: BLE001
            return {"status": "error", "message": f"database unreachable: {type(exc).__name__}"}
        return {"status": "ok"}

    async def _nats_check(self) -> Check:
        """One connection made in the background and kept (it reconnects by itself); the check
        is a round trip on it, so a probe never opens a connection."""
        if not self.settings.nats_url:
            return {"status": "warning", "message": "NATS_URL is not set"}
        self.start()
        assert self._nats_task is not None
        if not self._nats_task.done():  # the first connect (or a retry of it) is still under way
            await asyncio.wait({self._nats_task}, timeout=PROBE_TIMEOUT_S)
        if self._nats is None or not self._nats.is_connected:
            return {"status": "error", "message": "NATS unreachable: not connected"}
        try:
            await self._nats.flush(timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # reported, never raised  # noqa: BLE001
            return {"status": "error", "message": f"NATS unreachable: {type(exc).__name__}"}
        return {"status": "ok"}

    def start(self) -> None:
        """Begin connecting to NATS (at start-up, so the first probe finds a connection)."""
        if not self.settings.nats_url:
            return
        if self._nats_task is None or (self._nats_task.done() and self._nats is None):
            self._nats_task = asyncio.create_task(self._connect_nats())

    async def _connect_nats(self) -> None:
        try:
            self._nats = await connect(self.settings, name="dfm-gateway", reconnect_time_wait=2)
        except Exception as exc:  # the next probe starts another attempt  # noqa: BLE001
            log.warning("gateway_health_nats_connect_failed", error=type(exc).__name__)

    async def aclose(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
        if self._nats_task is not None and not self._nats_task.done():
            self._nats_task.cancel()
        if self._nats is not None:
            await self._nats.close()
