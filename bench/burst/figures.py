"""The burst benchmark's arithmetic, pure: what was sent (``Sent``) and the sandbox's GHL request
log (``GET /_sandbox/calls?vendor=ghl``: method, path, status, ``at`` = wall-clock time the
sandbox answered, ``traceparent``) in; drain, requests per event, 429s and latencies out.

Each sent webhook carries its own W3C ``traceparent``; the ingress continues that trace onto
the NATS message, the consumer continues it for the delivery and every vendor request carries
it on (services/infra/tracing.py). So a GHL request belongs to the sent event whose trace id it
carries; a request with no sent event's trace (an echo's handling, a sweep) is *unattributed*.

A *write* is a GHL request other than GET answered 2xx. A refused request (429, 422) is a
request but not a write.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLASSES",
    "Drain",
    "PerClass",
    "Sent",
    "Statuses",
    "drain",
    "endpoints",
    "is_write",
    "latencies",
    "new_trace",
    "percentile",
    "requests_per_event",
    "status_counts",
    "trace_id",
    "traceparent",
]

CLASSES = ("contact", "call", "text", "stop")  # the burst's contacts, then the real-time kinds


@dataclass(frozen=True)
class Sent:
    """One webhook the bench sent: its trace id, class, the ingress's final answer (HTTP status,
    body ``status`` and ``id``) and wall-clock times of the first send and of the 2xx answer."""

    trace: str
    kind: str
    status: int
    answer: str | None
    event_id: str | None
    sent_at: float
    accepted_at: float | None

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None


def new_trace() -> str:
    """A fresh 32-hex-digit trace id."""
    return secrets.token_hex(16)


def traceparent(trace: str) -> str:
    """The W3C ``traceparent`` header of a new span in ``trace`` (sampled)."""
    return f"00-{trace}-{secrets.token_hex(8)}-01"


def trace_id(header: str | None) -> str | None:
    """The trace id of a ``traceparent`` header, None when absent or malformed."""
    if not header:
        return None
    parts = header.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return None
    return parts[1]


def is_write(call: dict[str, Any]) -> bool:
    return call["method"] != "GET" and 200 <= int(call["status"]) < 300


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _by_trace(calls: Iterable[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    out: dict[str | None, list[dict[str, Any]]] = {}
    for c in calls:
        out.setdefault(trace_id(c.get("traceparent")), []).append(c)
    return out


@dataclass
class PerClass:
    """GHL requests (any status) per accepted event, by class."""

    requests: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    unattributed: int = 0

    def per_event(self, kind: str) -> float:
        return self.requests[kind] / self.events[kind] if self.events.get(kind) else math.nan


def requests_per_event(sent: Sequence[Sent], calls: Sequence[dict[str, Any]]) -> PerClass:
    by_trace = _by_trace(calls)
    result = PerClass(requests=dict.fromkeys(CLASSES, 0), events=dict.fromkeys(CLASSES, 0))
    mine = set()
    for s in sent:
        if not s.accepted:
            continue
        mine.add(s.trace)
        result.events[s.kind] = result.events.get(s.kind, 0) + 1
        result.requests[s.kind] = result.requests.get(s.kind, 0) + len(by_trace.get(s.trace, []))
    result.unattributed = sum(len(cs) for t, cs in by_trace.items() if t not in mine)
    return result


@dataclass(frozen=True)
class Drain:
    """First contact accepted → the last contact's last GHL write, against N contacts at the
    limit's pace with one request each (``per_10s`` requests / 10 s)."""

    seconds: float
    lower_bound_s: float
    without_write: int  # accepted contacts whose trace has no write

    @property
    def ratio(self) -> float:
        return self.seconds / self.lower_bound_s if self.lower_bound_s else math.nan


def drain(sent: Sequence[Sent], calls: Sequence[dict[str, Any]], per_10s: int = 100) -> Drain:
    by_trace = _by_trace(calls)
    contacts = [s for s in sent if s.kind == "contact" and s.accepted_at is not None]
    if not contacts:
        return Drain(math.nan, 0.0, 0)
    first = min(s.accepted_at for s in contacts if s.accepted_at is not None)
    last_writes = [max((c["at"] for c in by_trace.get(s.trace, []) if is_write(c)), default=None) for s in contacts]
    done = [t for t in last_writes if t is not None]
    seconds = max(done) - first if done else math.nan
    return Drain(seconds, len(contacts) / (per_10s / 10), len(last_writes) - len(done))


def latencies(sent: Sequence[Sent], calls: Sequence[dict[str, Any]], kinds: Sequence[str]) -> tuple[list[float], int]:
    """Seconds from each accepted event's 2xx to its trace's last GHL write, for ``kinds``; and
    how many accepted events of those kinds had no write."""
    by_trace = _by_trace(calls)
    values: list[float] = []
    without = 0
    for s in sent:
        if s.kind not in kinds or s.accepted_at is None:
            continue
        last = max((c["at"] for c in by_trace.get(s.trace, []) if is_write(c)), default=None)
        if last is None:
            without += 1
        else:
            values.append(float(last) - s.accepted_at)
    return values, without


@dataclass(frozen=True)
class Statuses:
    total: int
    too_many: int  # 429: the sandbox's 100 / 10 s window was full
    invalid: int  # 422: the sandbox's OpenAPI check refused the request


def status_counts(calls: Sequence[dict[str, Any]]) -> Statuses:
    return Statuses(
        total=len(calls),
        too_many=sum(1 for c in calls if int(c["status"]) == 429),
        invalid=sum(1 for c in calls if int(c["status"]) == 422),
    )


def endpoint(call: dict[str, Any]) -> str:
    """``METHOD /path`` with id-like segments (any digit, or 16+ characters) as ``{id}``."""
    parts = ["{id}" if any(ch.isdigit() for ch in p) or len(p) >= 16 else p for p in str(call["path"]).split("/")]
    return f"{call['method']} {'/'.join(parts)}"


def endpoints(sent: Sequence[Sent], calls: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """GHL requests by class and endpoint (``endpoint``), most frequent first."""
    kind_of = {s.trace: s.kind for s in sent if s.accepted}
    out: dict[str, dict[str, int]] = {}
    for c in calls:
        kind = kind_of.get(trace_id(c.get("traceparent")) or "", "unattributed")
        counts = out.setdefault(kind, {})
        counts[endpoint(c)] = counts.get(endpoint(c), 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in out.items()}
