"""GHL's 100 requests / 10 s and its daily quota per location, held by all replicas together
(invariant 6, spec/outbound.md §2.1).

Why PostgreSQL rather than NATS KV: every consumer already holds a database pool, the
budget is small (≈8 requests/s), and a function holding an advisory lock gives a sliding
window shared by all replicas in one round trip; KV would need compare-and-set retries
under contention. Buckets are one second wide; a request is allowed when the sum over the
``window_s + 1`` buckets that can overlap the vendor's exact sliding window is below the
limit, so the count can never exceed the vendor's (it errs by up to a second of headroom).
When the budget is empty, a caller waits for it in-process as long as the total wait stays
within ``max_wait_s`` (a rule half done keeps its progress, and the wait is far below the
consumer's AckWait); beyond that it gets ``RetryLater(counts_as_attempt=False)`` and the message
is nak'ed with the delay. Failing fast on every empty budget would livelock: each attempt would
spend budget on its first calls and be thrown away at a later one.

The daily quota (``GHL_RATE_LIMIT_PER_DAY``) is checked in the same statement, under the
same lock, over a rolling 24 h counted in five-minute buckets (migration 0007): GHL does not
say when its day starts, and a rolling window holds whichever day it uses. A request is taken
from both windows or from neither. Once the quota is spent no call reaches GHL: the caller
gets ``QuotaSpent`` (a ``RetryLater`` not counted as an attempt) with the delay until the
oldest counted bucket leaves the window, so the event waits (the sweep re-drives it then)
instead of spending its retries; ``dfm_rate_budget_quota_remaining`` falls to 0 and
``dfm_rate_budget_quota_refusals_total`` counts the refused calls.
"""

from __future__ import annotations

import asyncio
import random
import time

from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.errors import RetryLater
from services.infra.logging import get_logger
from services.infra.settings import Settings

log = get_logger(__name__)

# One statement, run outside any transaction of ours: the function takes the advisory
# transaction lock, reads the window after it holds it, takes a request if there is room and
# purges old buckets now and then (migrations/versions/0004_round_trip_functions.py).
_TAKE = text(
    "SELECT granted, oldest FROM dfm_rate_take(CAST(:key AS text), CAST(:now AS bigint), "
    "CAST(:window AS bigint), CAST(:limit AS bigint), CAST(:purge AS boolean))"
)
# The same with the daily quota (migrations/versions/0007_daily_quota.py).
_TAKE_WITH_QUOTA = text(
    "SELECT granted, oldest, quota_used, quota_oldest FROM dfm_rate_take_with_quota("
    "CAST(:key AS text), CAST(:now AS bigint), CAST(:window AS bigint), CAST(:limit AS bigint), "
    "CAST(:quota_window AS bigint), CAST(:quota_bucket AS bigint), CAST(:quota AS bigint), "
    "CAST(:purge AS boolean))"
)
QUOTA_WINDOW_S = 86_400
QUOTA_BUCKET_S = 300

QUOTA_REMAINING = Gauge(
    "dfm_rate_budget_quota_remaining",
    "Requests left in the rolling daily quota, as last seen by this process",
    ["budget"],
)
QUOTA_REFUSALS = Counter(
    "dfm_rate_budget_quota_refusals_total", "Vendor calls held back because the daily quota is spent", ["budget"]
)


class QuotaSpent(RetryLater):
    """The budget's daily quota is spent: nothing may be sent before ``delay`` seconds.

    Not counted as an attempt (our own budget, no vendor was asked)."""

    def __init__(self, key: str, delay: float) -> None:
        super().__init__(
            delay, f"rate budget {key}: daily quota spent, next request in {delay:.0f} s", counts_as_attempt=False
        )
        self.key = key


class RateBudget:
    """A shared sliding-window budget under ``key``, with an optional daily ``quota``."""

    def __init__(
        self,
        engine: AsyncEngine,
        key: str,
        limit: int,
        window_s: int = 10,
        max_wait_s: float | None = None,
        quota: int | None = None,
    ) -> None:
        self._engine = engine
        self.key = key
        self.limit = limit
        self.window_s = window_s
        self.max_wait_s = window_s * 1.5 if max_wait_s is None else max_wait_s
        self.quota = quota
        self._last_purge = 0
        self._quota_spent = False

    @classmethod
    def for_ghl(cls, engine: AsyncEngine, settings: Settings, window_s: int = 10) -> RateBudget:
        """The per-location GHL budget (``GHL_RATE_LIMIT_PER_10S``, ``GHL_RATE_LIMIT_PER_DAY``)
        all replicas share."""
        return cls(
            engine,
            f"ghl:{settings.ghl_location_id}",
            settings.ghl_rate_limit_per_10s,
            window_s,
            quota=settings.ghl_rate_limit_per_day,
        )

    async def acquire(self) -> None:
        """Take one request from the budget, waiting up to ``max_wait_s``, else RetryLater
        (``QuotaSpent`` when it is the daily quota that is spent)."""
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
        """None when a request was taken, else seconds until the window has room. Raises
        ``QuotaSpent`` when the daily quota has no room for longer than ``max_wait_s``."""
        now = int(time.time())
        purge = now - self._last_purge >= 30
        params = {"key": self.key, "now": now, "window": self.window_s, "limit": self.limit, "purge": purge}
        if self.quota is not None:
            params.update(quota=self.quota, quota_window=QUOTA_WINDOW_S, quota_bucket=QUOTA_BUCKET_S)
        async with self._engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await auto.execute(_TAKE if self.quota is None else _TAKE_WITH_QUOTA, params)).one()
        if purge:
            self._last_purge = now
        if self.quota is not None:
            self._see_quota(now, row.quota_used, row.granted)
            if not row.granted and row.quota_used >= self.quota:
                # the oldest counted bucket leaves the window one bucket after it is a full window old
                oldest = row.quota_oldest if row.quota_oldest is not None else now - now % QUOTA_BUCKET_S
                delay = float(max(1, oldest + QUOTA_WINDOW_S + QUOTA_BUCKET_S - now))
                if delay > self.max_wait_s:
                    QUOTA_REFUSALS.labels(self.key).inc()
                    raise QuotaSpent(self.key, delay)
                return delay
        if row.granted:
            return None
        oldest = row.oldest if row.oldest is not None else now
        return float(max(1, oldest + self.window_s + 1 - now))

    def _see_quota(self, now: int, used: int, granted: bool) -> None:
        """The gauge, and one warning per process when the quota runs out (not one per call)."""
        assert self.quota is not None
        QUOTA_REMAINING.labels(self.key).set(max(0, self.quota - used))
        spent = not granted and used >= self.quota
        if spent and not self._quota_spent:
            log.warning("rate_budget_quota_spent", budget=self.key, quota=self.quota, window_s=QUOTA_WINDOW_S)
        elif granted and self._quota_spent:
            log.info("rate_budget_quota_available", budget=self.key)
        if spent:
            self._quota_spent = True
        elif granted:
            self._quota_spent = False
