"""GHL's 100 requests / 10 s per location, held by all replicas together (invariant 6).

Why PostgreSQL rather than NATS KV: every consumer already holds a database pool, the
budget is small (≈8 requests/s), and a function holding an advisory lock gives a sliding
window shared by all replicas in one round trip; KV would need compare-and-set retries
under contention. Buckets are one second wide; a request is allowed when the sum over the
``window_s + 1`` buckets that can overlap the vendor's exact sliding window is below the
limit, so the count can never exceed the vendor's (it errs by up to a second of headroom). When the budget is empty, a caller waits for
it in-process as long as the total wait stays within ``max_wait_s`` (a rule half done keeps
its progress, and the wait is far below the consumer's AckWait); beyond that it gets
``RetryLater(counts_as_attempt=False)`` and the message is nak'ed with the delay. Failing
fast on every empty budget would livelock: each attempt would spend budget on its first
calls and be thrown away at a later one.
"""

from __future__ import annotations

import asyncio
import random
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import RetryLater
from services.common.settings import Settings

# One statement, run outside any transaction of ours: the function takes the advisory
# transaction lock, reads the window after it holds it, takes a request if there is room and
# purges old buckets now and then (migrations/versions/0004_round_trip_functions.py).
_TAKE = text("SELECT granted, oldest FROM dfm_rate_take(CAST(:key AS text), CAST(:now AS bigint), "
             "CAST(:window AS bigint), CAST(:limit AS bigint), CAST(:purge AS boolean))")


class RateBudget:
    """A shared sliding-window budget under ``key``."""

    def __init__(self, engine: AsyncEngine, key: str, limit: int, window_s: int = 10,
                 max_wait_s: float | None = None) -> None:
        self._engine = engine
        self.key = key
        self.limit = limit
        self.window_s = window_s
        self.max_wait_s = window_s * 1.5 if max_wait_s is None else max_wait_s
        self._last_purge = 0

    @classmethod
    def for_ghl(cls, engine: AsyncEngine, settings: Settings, window_s: int = 10) -> RateBudget:
        """The per-location GHL budget (``GHL_RATE_LIMIT_PER_10S``) all replicas share."""
        return cls(engine, f"ghl:{settings.ghl_location_id}", settings.ghl_rate_limit_per_10s, window_s)

    async def acquire(self) -> None:
        """Take one request from the budget, waiting up to ``max_wait_s``, else RetryLater."""
        waited = 0.0
        while True:
            delay = await self._try()
            if delay is None:
                return
            if waited + delay > self.max_wait_s:
                raise RetryLater(delay, f"rate budget {self.key} empty", counts_as_attempt=False)
            await asyncio.sleep(delay + random.uniform(0, 0.25))  # a rate-limit wait, bounded
            waited += delay

    async def _try(self) -> float | None:
        """None when a request was taken, else seconds until the window has room."""
        now = int(time.time())
        purge = now - self._last_purge >= 30
        async with self._engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await auto.execute(_TAKE, {"key": self.key, "now": now, "window": self.window_s,
                                              "limit": self.limit, "purge": purge})).one()
        if purge:
            self._last_purge = now
        if row.granted:
            return None
        oldest = row.oldest if row.oldest is not None else now
        return float(max(1, oldest + self.window_s + 1 - now))
