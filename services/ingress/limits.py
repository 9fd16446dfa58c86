"""Per-address throttles of the ingress: failed admin/jobs authentication and the OAuth
install callback (security-audit F12, F21).

Webhook senders are never throttled here (spec/inbound.md C11: GHL and Aloware deliver from
shared egress addresses). The address is the peer uvicorn reports, which believes
``X-Forwarded-For`` only from ``FORWARDED_ALLOW_IPS`` (127.0.0.1 unless set); behind a load
balancer that is not in it, every client shares the balancer's address and a throttle applies
to all of them together — the safe direction for endpoints only operators and GHL use.

Counts live in this process: with N ingress replicas an address gets N times the limit.
"""

from __future__ import annotations

import math
import time
from collections import deque

from starlette.requests import Request

WINDOW_S = 15 * 60
MAX_TRACKED = 10_000  # addresses kept; beyond it the least recently seen are forgotten


class SlidingWindow:
    """At most ``limit`` hits per address in any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float = WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.pop(key, None) or deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if hits:  # re-inserted last: the dict's order is the order of use
            self._hits[key] = hits
        return hits

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it is under its limit."""
        now = time.monotonic()
        hits = self._recent(key, now)
        if len(hits) < self.limit:
            return None
        return max(1, math.ceil(hits[-self.limit] + self.window_s - now))

    def hit(self, key: str) -> None:
        """Count one attempt of ``key``."""
        now = time.monotonic()
        hits = self._recent(key, now)
        hits.append(now)
        self._hits[key] = hits
        if len(self._hits) > MAX_TRACKED:
            del self._hits[next(iter(self._hits))]


def client_address(request: Request) -> str:
    """The address a throttle counts against."""
    return request.client.host if request.client else "unknown"
