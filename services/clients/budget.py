"""GHL's 100 requests / 10 s and its daily quota per location, held by all replicas together
(invariant 6, spec/outbound.md §2.1), learned from GHL's own headers and shared by two lanes.

Why PostgreSQL rather than NATS KV: every consumer already holds a database pool, the
budget is small (≈10 requests/s), and a function holding an advisory lock gives a sliding
window shared by all replicas in one round trip; KV would need compare-and-set retries
under contention. Each take is one statement, ``dfm_rate_acquire``
(migrations/versions/0009_learned_rate_budget.py); what is learned lives in the budget's row
of ``rate_budgets``, so every replica uses what any replica learned.

**The window.** Grants are counted per millisecond of the database's clock, read after the
lock is held. A request is granted when fewer than the limit were granted in the last window
plus a margin (``(now − window − margin, now]``), so every window of that length, wherever
it starts, holds at most ``limit`` grants of all replicas together (replicas' own clocks do
not matter); under saturated demand a slot comes back one window and its margin after it was
used, so the steady rate is ``limit × window / (window + margin)`` per window.

**Learning.** ``GHL_RATE_LIMIT_PER_10S`` over 10 s is the starting point: it holds until a GHL
answer says its window (``X-RateLimit-Max``, ``X-RateLimit-Interval-Milliseconds``), and
always when ``GHL_RATE_BUDGET_LEARN`` is false. Once learned, the limit is ``floor(max ×
GHL_RATE_BUDGET_FRACTION)`` over GHL's interval: 98 of 100 per 10 s with a 200 ms margin
(``GHL_RATE_BUDGET_MARGIN_S``), i.e. 98 × 10 / 10.2 = 96 % of GHL's window under saturated
demand. The configured value is not an upper bound then, because a number chosen for "100 per
10 s" would waste a fifth of the window forever and go wrong when GHL changes it; the fraction
is the operator's cap. The 2 requests and the 200 ms left over absorb the network: GHL counts
arrivals, and a burst granted all at once reaches GHL spread over its latencies, so the same
slots granted again one window later can reach it less than a window after the first ones
(tests/integration/test_rate_budget.py saw 429s with no margin; the margin is time, not a
share of the window, because the network's jitter does not shrink with a shorter window). The daily quota
is the other way round: ``GHL_RATE_LIMIT_PER_DAY`` is the cap and a smaller
``X-RateLimit-Limit-Daily`` lowers it, since spending the day early is not throughput but a day
without GHL.

**The vendor's count wins when it is lower.** When GHL's ``X-RateLimit-Remaining`` (or
``X-RateLimit-Daily-Remaining``) says fewer are left than the window has room for (another app
of the location, a replica of an older release, a window GHL counts differently), the
difference is counted as spent now, in the shared buckets, so every replica sends that much
less until it leaves the window. The round trip is skipped when GHL has at least as many left
as this process saw after its last grant (the usual case, since we run below GHL's max).

**A 429 pauses every replica once.** The first 429 of an episode sets ``paused_until`` in the
row to ``Retry-After``, else ``X-RateLimit-Interval-Milliseconds``, else one window; every
acquire of every replica waits for it. The 429s of requests already in flight arrive while it
holds and neither extend it nor count again (``dfm_rate_budget_pauses_total`` counts episodes).

**Lanes** (``services.infra.lanes.current_lane()``). With ``L`` the limit and ``R =
max(1, ceil(L × GHL_RATE_BUDGET_REALTIME_RESERVE))`` (1 of 98 by default), realtime may take while the
window holds fewer than ``L``; bulk while it holds fewer than ``L − R`` when a realtime request
was made within ``GHL_RATE_BUDGET_REALTIME_DEMAND_S`` (2 s), else fewer than ``L``; and nothing
while a refused realtime caller is waiting (``realtime_waiting_until``: the time it will try
again plus a 250 ms grace). So when both wait on a full window, each freed slot goes to
realtime until no realtime caller waits; then bulk fills up to ``L − R`` and the reserve keeps
the next realtime request from waiting at all. Bulk never starves: it loses only the slots
realtime takes (plus up to the grace once after realtime was served), and has all of ``L``
after 2 s without realtime. Every marker is a timestamp, so a replica that dies holding one
holds nothing past its expiry.

**Waiting.** When the budget is empty, a caller waits for it in-process as long as the total
wait stays within ``max_wait_s`` (a rule half done keeps its progress, and the wait is far
below the consumer's AckWait); beyond that it gets ``RetryLater(counts_as_attempt=False)`` and
the message is nak'ed with the delay. Failing fast on every empty budget would livelock: each
attempt would spend budget on its first calls and be thrown away at a later one.

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
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.lanes import Lane
from services.clients.http import MAX_RETRY_AFTER_S, ObservedTransport, retry_delay
from services.infra.errors import RetryLater
from services.infra.lanes import current_lane
from services.infra.logging import get_logger
from services.infra.settings import Settings

__all__ = ["BudgetPolicy", "Grant", "QuotaSpent", "RateBudget"]

log = get_logger(__name__)

# One statement each, run outside any transaction of ours: the function takes the advisory
# transaction lock, reads the window after it holds it, and writes under it
# (migrations/versions/0009_learned_rate_budget.py).
_ACQUIRE = text(
    "SELECT granted, retry_ms, at_ms, used, lane_limit, window_limit, window_ms, quota_used, quota_limit "
    "FROM dfm_rate_acquire(CAST(:key AS text), CAST(:lane AS text), CAST(:limit AS bigint), "
    "CAST(:window_ms AS bigint), CAST(:fraction AS double precision), CAST(:margin_ms AS bigint), "
    "CAST(:reserve AS double precision), "
    "CAST(:demand_ms AS bigint), CAST(:grace_ms AS bigint), CAST(:max_wait_ms AS bigint), "
    "CAST(:quota AS bigint), CAST(:quota_window AS bigint), CAST(:quota_bucket AS bigint), "
    "CAST(:purge AS boolean))"
)
_OBSERVE = text(
    "SELECT window_limit, window_ms, window_left, adopted, quota_adopted, pause_until, pause_started "
    "FROM dfm_rate_observe(CAST(:key AS text), CAST(:max AS bigint), CAST(:interval_ms AS bigint), "
    "CAST(:remaining AS bigint), CAST(:daily_max AS bigint), CAST(:daily_remaining AS bigint), "
    "CAST(:pause_ms AS bigint), CAST(:limit AS bigint), CAST(:window_ms AS bigint), "
    "CAST(:fraction AS double precision), CAST(:margin_ms AS bigint), CAST(:quota AS bigint), "
    "CAST(:quota_window AS bigint), "
    "CAST(:quota_bucket AS bigint))"
)
_STATE = text(
    "SELECT learned_max, learned_interval_ms, learned_daily_max, paused_until, pauses, "
    "realtime_wanted_at, realtime_waiting_until FROM rate_budgets WHERE key = :key"
)
QUOTA_WINDOW_S = 86_400
QUOTA_BUCKET_S = 300
# a header value we take: ASCII digits, at most a billion (GHL's are 100, 10000, 200000)
_COUNT = re.compile(r"[0-9]{1,10}", re.ASCII)
_MAX_COUNT = 1_000_000_000
# waiters of all replicas wake when the same slot frees; a little jitter spreads them: at most
# 0.5 % of the window (so the slot is not left idle for long) and never more than 50 ms
_JITTER_S = 0.05

QUOTA_REMAINING = Gauge(
    "dfm_rate_budget_quota_remaining",
    "Requests left in the rolling daily quota, as last seen by this process",
    ["budget"],
)
QUOTA_REFUSALS = Counter(
    "dfm_rate_budget_quota_refusals_total", "Vendor calls held back because the daily quota is spent", ["budget"]
)
GRANTS = Counter("dfm_rate_budget_grants_total", "Requests taken from the budget, per lane", ["budget", "lane"])
REFUSALS = Counter(
    "dfm_rate_budget_refusals_total", "Takes refused (the caller waited or was nak'ed), per lane", ["budget", "lane"]
)
WAIT = Histogram(
    "dfm_rate_budget_wait_seconds",
    "How long a granted request waited for the budget, per lane",
    ["budget", "lane"],
    buckets=(0.005, 0.05, 0.25, 1, 2.5, 5, 10, 15, 30),
)
LANE_LIMIT = Gauge(
    "dfm_rate_budget_limit",
    "Requests the lane may have in the window, at this process's last take (bulk: less while realtime is active)",
    ["budget", "lane"],
)
USED = Gauge("dfm_rate_budget_used", "Requests in the window after this process's last take", ["budget"])
WINDOW = Gauge("dfm_rate_budget_window_seconds", "The window the budget counts in (learned or configured)", ["budget"])
LEARNED_MAX = Gauge(
    "dfm_rate_budget_learned_max", "The vendor's X-RateLimit-Max as last learned by this process", ["budget"]
)
PAUSES = Counter(
    "dfm_rate_budget_pauses_total",
    "429 episodes that paused every replica (counted by the replica that saw the first)",
    ["budget"],
)
ADOPTED = Counter(
    "dfm_rate_budget_adopted_total",
    "Requests counted as spent because the vendor said fewer were left than the budget thought",
    ["budget", "window"],
)
OBSERVE_FAILURES = Counter(
    "dfm_rate_budget_observe_failures_total", "Vendor answers whose rate headers could not be recorded", ["budget"]
)


class QuotaSpent(RetryLater):
    """The budget's daily quota is spent: nothing may be sent before ``delay`` seconds.

    Not counted as an attempt (our own budget, no vendor was asked)."""

    def __init__(self, key: str, delay: float) -> None:
        super().__init__(
            delay, f"rate budget {key}: daily quota spent, next request in {delay:.0f} s", counts_as_attempt=False
        )
        self.key = key


@dataclass(frozen=True)
class BudgetPolicy:
    """How much of the vendor's stated window the budget spends and how lanes share it (the
    module docstring has the arithmetic)."""

    learn: bool = True
    fraction: float = 0.98
    margin_s: float = 0.2
    # a slot or so: strict priority comes from the waiting marker; a larger reserve costs bulk
    # that share whenever a real-time event came in the last seconds (bench/burst: 10 % held the
    # drain at 1.39 × N/10 s with a call or a text every 2 s)
    realtime_reserve: float = 0.01
    realtime_demand_s: float = 2.0
    realtime_grace_s: float = 0.25

    @classmethod
    def from_settings(cls, settings: Settings) -> BudgetPolicy:
        """``GHL_RATE_BUDGET_*``."""
        return cls(
            learn=settings.ghl_rate_budget_learn,
            fraction=settings.ghl_rate_budget_fraction,
            margin_s=settings.ghl_rate_budget_margin_s,
            realtime_reserve=settings.ghl_rate_budget_realtime_reserve,
            realtime_demand_s=settings.ghl_rate_budget_realtime_demand_s,
        )


@dataclass(frozen=True)
class Grant:
    """One request taken: when (epoch ms on the database's clock), in which lane, after how
    long and how many refusals, and the window as it was then."""

    at_ms: int
    lane: Lane
    waited_s: float
    refusals: int
    used: int
    limit: int
    lane_limit: int
    window_ms: int


@dataclass(frozen=True)
class BudgetState:
    """The budget's shared row (``rate_budgets``), for operators and tests."""

    learned_max: int | None
    learned_interval_ms: int | None
    learned_daily_max: int | None
    paused_until: Any
    pauses: int


class RateBudget:
    """A shared sliding-window budget under ``key``, with an optional daily ``quota``;
    ``limit`` per ``window_s`` until the vendor's headers say otherwise."""

    def __init__(
        self,
        engine: AsyncEngine,
        key: str,
        limit: int,
        window_s: float = 10,
        max_wait_s: float | None = None,
        quota: int | None = None,
        *,
        policy: BudgetPolicy | None = None,
    ) -> None:
        self._engine = engine
        self.key = key
        self.limit = limit
        self.window_s = window_s
        self.max_wait_s = window_s * 1.5 if max_wait_s is None else max_wait_s
        self.quota = quota
        self.policy = policy or BudgetPolicy()
        self._last_purge = 0.0
        self._quota_spent = False
        # what this process last knew, to skip the observe round trip when nothing is new
        self._known: tuple[int | None, int | None, int | None] = (None, None, None)
        self._left: int | None = None
        self._quota_left: int | None = None

    @classmethod
    def for_ghl(cls, engine: AsyncEngine, settings: Settings, window_s: float = 10) -> RateBudget:
        """The per-location GHL budget (``GHL_RATE_LIMIT_PER_10S``, ``GHL_RATE_LIMIT_PER_DAY``,
        ``GHL_RATE_BUDGET_*``) all replicas share."""
        return cls(
            engine,
            f"ghl:{settings.ghl_location_id}",
            settings.ghl_rate_limit_per_10s,
            window_s,
            quota=settings.ghl_rate_limit_per_day,
            policy=BudgetPolicy.from_settings(settings),
        )

    def transport(self, inner: httpx.AsyncBaseTransport | None = None) -> ObservedTransport:
        """A transport for a GHL client that shows this budget every answer (``observe``)."""
        return ObservedTransport(self.observe, inner)

    async def acquire(self) -> None:
        """Take one request from the budget for the current lane, waiting up to
        ``max_wait_s``, else RetryLater (``QuotaSpent`` when it is the daily quota)."""
        await self.take()

    async def take(self, lane: Lane | None = None) -> Grant:
        """``acquire`` that says what was granted (``lane`` defaults to ``current_lane()``)."""
        lane = lane or current_lane()
        loop = asyncio.get_running_loop()
        started = loop.time()
        refusals = 0
        while True:
            waited = loop.time() - started
            row = await self._attempt(lane, max(0.0, self.max_wait_s - waited))
            if row.granted:
                GRANTS.labels(self.key, lane).inc()
                WAIT.labels(self.key, lane).observe(waited)
                return Grant(
                    row.at_ms, lane, waited, refusals, row.used, row.window_limit, row.lane_limit, row.window_ms
                )
            refusals += 1
            REFUSALS.labels(self.key, lane).inc()
            delay = row.retry_ms / 1000
            if self._spent(row) and delay > self.max_wait_s:
                QUOTA_REFUSALS.labels(self.key).inc()
                raise QuotaSpent(self.key, delay)
            if waited + delay > self.max_wait_s:
                raise RetryLater(delay, f"rate budget {self.key} empty", counts_as_attempt=False)
            jitter = random.uniform(0, min(_JITTER_S, row.window_ms / 200_000))
            await asyncio.sleep(delay + jitter)  # a rate-limit wait, bounded

    async def _attempt(self, lane: Lane, max_wait_s: float) -> Any:
        now = time.monotonic()
        purge = now - self._last_purge >= 30
        params = {
            "key": self.key,
            "lane": lane,
            "limit": self.limit,
            "window_ms": round(self.window_s * 1000),
            "fraction": self.policy.fraction if self.policy.learn else None,
            "margin_ms": round(self.policy.margin_s * 1000),
            "reserve": self.policy.realtime_reserve,
            "demand_ms": round(self.policy.realtime_demand_s * 1000),
            "grace_ms": round(self.policy.realtime_grace_s * 1000),
            "max_wait_ms": round(max_wait_s * 1000),
            "quota": self.quota,
            "quota_window": QUOTA_WINDOW_S,
            "quota_bucket": QUOTA_BUCKET_S,
            "purge": purge,
        }
        async with self._engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await auto.execute(_ACQUIRE, params)).one()
        if purge:
            self._last_purge = now
        LANE_LIMIT.labels(self.key, lane).set(row.lane_limit)
        USED.labels(self.key).set(row.used)
        WINDOW.labels(self.key).set(row.window_ms / 1000)
        if row.granted:
            self._left = row.window_limit - row.used
        if row.quota_limit is not None:
            self._see_quota(row.quota_limit, row.quota_used, row.granted)
            if row.granted:
                self._quota_left = row.quota_limit - row.quota_used
        return row

    @staticmethod
    def _spent(row: Any) -> bool:
        return row.quota_limit is not None and row.quota_used >= row.quota_limit

    async def observe(self, response: httpx.Response) -> None:
        """Learn from a vendor answer: its stated window, a ``Remaining`` lower than ours, and
        a 429's pause, all in the shared row. A database failure here is logged and counted,
        never raised: the answer itself (perhaps a write that happened) must reach the caller."""
        await self.observe_headers(response.status_code, response.headers)

    async def observe_headers(self, status: int, headers: Mapping[str, str]) -> None:
        """``observe`` from a status and headers (case-insensitive mapping)."""
        maximum = _count(headers.get("x-ratelimit-max"))
        interval_ms = _count(headers.get("x-ratelimit-interval-milliseconds"))
        remaining = _count(headers.get("x-ratelimit-remaining"))
        daily_max = _count(headers.get("x-ratelimit-limit-daily"))
        daily_remaining = _count(headers.get("x-ratelimit-daily-remaining"))
        if maximum == 0 or interval_ms == 0:  # not a window anyone can send in
            maximum = interval_ms = None
        pause_ms: int | None = None
        if status == 429:
            remaining = 0 if remaining is None else remaining
            delay = retry_delay(headers)
            if delay is None and interval_ms is not None:
                delay = interval_ms / 1000
            pause_ms = round(min(MAX_RETRY_AFTER_S, self.window_s if delay is None else delay) * 1000)
        if not self.policy.learn:
            maximum = interval_ms = daily_max = None
        learned = (maximum, interval_ms, daily_max)
        news = any(v is not None for v in learned) and learned != self._known
        lower = remaining is not None and (self._left is None or remaining < self._left)
        lower_daily = daily_remaining is not None and (self._quota_left is None or daily_remaining < self._quota_left)
        if not (news or lower or lower_daily or pause_ms is not None):
            return
        params = {
            "key": self.key,
            "max": maximum,
            "interval_ms": interval_ms,
            "remaining": remaining,
            "daily_max": daily_max,
            "daily_remaining": daily_remaining,
            "pause_ms": pause_ms,
            "limit": self.limit,
            "window_ms": round(self.window_s * 1000),
            "fraction": self.policy.fraction if self.policy.learn else None,
            "margin_ms": round(self.policy.margin_s * 1000),
            "quota": self.quota,
            "quota_window": QUOTA_WINDOW_S,
            "quota_bucket": QUOTA_BUCKET_S,
        }
        try:
            async with self._engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                row = (await auto.execute(_OBSERVE, params)).one()
        except (SQLAlchemyError, OSError) as exc:
            OBSERVE_FAILURES.labels(self.key).inc()
            log.warning("rate_budget_observe_failed", budget=self.key, error=type(exc).__name__)
            return
        if news:
            self._known = learned
            if maximum is not None:
                LEARNED_MAX.labels(self.key).set(maximum)
            log.info(
                "rate_budget_learned",
                budget=self.key,
                vendor_max=maximum,
                interval_ms=interval_ms,
                daily_max=daily_max,
                limit=row.window_limit,
                window_ms=row.window_ms,
            )
        self._left = row.window_left  # until the next grant says what is left
        if row.adopted:
            ADOPTED.labels(self.key, "burst").inc(row.adopted)
        if row.quota_adopted:
            ADOPTED.labels(self.key, "daily").inc(row.quota_adopted)
        if row.pause_started:
            PAUSES.labels(self.key).inc()
            log.warning("rate_budget_paused", budget=self.key, pause_s=(pause_ms or 0) / 1000, status=status)

    async def state(self) -> BudgetState:
        """The shared row as it is now (all None/0 before anything was learned)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(_STATE, {"key": self.key})).one_or_none()
        if row is None:
            return BudgetState(None, None, None, None, 0)
        return BudgetState(
            row.learned_max, row.learned_interval_ms, row.learned_daily_max, row.paused_until, row.pauses
        )

    async def per_second(self) -> float:
        """The steady rate this budget grants under saturated demand, requests per second: the
        learned window (``floor(max × fraction)`` per GHL's interval) when there is one and
        learning is on, else the configured ``limit`` per ``window_s``; each slot comes back a
        window and its margin after it was used (the module docstring)."""
        limit, window = float(self.limit), self.window_s
        if self.policy.learn:
            state = await self.state()
            if state.learned_max and state.learned_interval_ms:
                limit, window = float(int(state.learned_max * self.policy.fraction)), state.learned_interval_ms / 1000
        return limit / (window + self.policy.margin_s)

    def _see_quota(self, quota: int, used: int, granted: bool) -> None:
        """The gauge, and one warning per process when the quota runs out (not one per call)."""
        QUOTA_REMAINING.labels(self.key).set(max(0, quota - used))
        spent = not granted and used >= quota
        if spent and not self._quota_spent:
            log.warning("rate_budget_quota_spent", budget=self.key, quota=quota, window_s=QUOTA_WINDOW_S)
        elif granted and self._quota_spent:
            log.info("rate_budget_quota_available", budget=self.key)
        if spent:
            self._quota_spent = True
        elif granted:
            self._quota_spent = False


def _count(value: str | None) -> int | None:
    """A header's non-negative count, None when absent or not one."""
    text = (value or "").strip()
    if not _COUNT.fullmatch(text):
        return None
    number = int(text)
    return number if number <= _MAX_COUNT else None
