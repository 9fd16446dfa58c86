"""Delivery lanes (issue #18): which work may wait behind a bulk backlog.

``realtime`` is everything an operator or a contact notices within seconds (calls and their
artifacts, conversation messages, opt-outs, DNC, dispositions, agent SMS); ``bulk`` is contact
synchronisation that arrives in bursts (CSV imports, list uploads). Both lanes spend the same
vendor budget; the budget serves ``realtime`` first without starving ``bulk``.

The classification is one list of subject patterns, the *bulk* ones (``DFM_BULK_SUBJECTS``,
default ``DEFAULT_BULK_SUBJECTS``); everything else a consumer takes is realtime.
``split_filters`` turns a consumer's filter subjects and that list into one filter list per
lane, so each lane gets its own durable (a FIFO of its own) and the lanes never overlap and
together take exactly what the one durable took. A wildcard filter that a bulk pattern covers
only in part (``webhooks.aloware.contact.>`` against ``…contact.contact_created``) is expanded
into the event types its family can have (``CLOSED_FAMILIES``, the ingress's classification),
so ``contact_dnc_updated`` stays realtime while ``contact_created`` is bulk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

__all__ = [
    "CLOSED_FAMILIES",
    "DEFAULT_BULK_SUBJECTS",
    "IDLE_SUBJECT",
    "LANES",
    "Lane",
    "LaneConfigError",
    "check_bulk_pattern",
    "covers",
    "drain_seconds",
    "lane_drain_seconds",
    "overlaps",
    "split_filters",
]

Lane = Literal["realtime", "bulk"]
LANES: tuple[Lane, ...] = ("realtime", "bulk")

DEFAULT_BULK_SUBJECTS: tuple[str, ...] = (
    # CA (Aloware contact → GHL contact): the burst of a CSV import or a list upload
    "webhooks.aloware.contact.contact_created",
    "webhooks.aloware.contact.contact_updated",
)
"""What is bulk unless the operator says otherwise: Aloware contact syncs into GHL. Their
siblings ``contact_disposed`` (D-2) and ``contact_dnc_updated`` (D-1) stay realtime."""

CLOSED_FAMILIES: dict[str, tuple[str, ...]] = {
    # services/ingress/classify.py _ALOWARE: the only tokens published as entity `contact`
    # (any other Aloware event is entity `unknown`); tests/unit/test_lanes_split.py checks it
    "webhooks.aloware.contact.>": (
        "webhooks.aloware.contact.contact_created",
        "webhooks.aloware.contact.contact_updated",
        "webhooks.aloware.contact.contact_disposed",
        "webhooks.aloware.contact.contact_dnc_updated",
    ),
}
"""Wildcard filters whose every possible subject is known, so a lane split may list them."""

IDLE_SUBJECT = "webhooks.idle.lane.none"
"""The filter of a lane with nothing in it (a durable without a filter would take the whole
stream): no publisher uses source ``idle`` (``contracts.subjects.webhook_subject`` maps
unknown sources to ``unknown``)."""

_TOKEN = re.compile(r"[a-z0-9_]+")


class LaneConfigError(ValueError):
    """A bulk pattern that cannot be applied (malformed, or covering part of a wildcard
    filter whose subjects are not all known)."""


def check_bulk_pattern(pattern: str) -> str:
    """``pattern`` when it is a webhook subject pattern (``webhooks.`` then lower-case tokens,
    ``*`` for one token, ``>`` last for the rest), else ``LaneConfigError``."""
    tokens = pattern.split(".")
    if len(tokens) < 2 or tokens[0] != "webhooks":
        raise LaneConfigError(f"{pattern!r} is not a webhook subject pattern (webhooks.<source>...)")
    for i, token in enumerate(tokens[1:], 1):
        if token == ">" and i == len(tokens) - 1:
            continue
        if token != "*" and not _TOKEN.fullmatch(token):
            raise LaneConfigError(f"{pattern!r}: token {token!r} is not [a-z0-9_]+, * or a final >")
    return pattern


def covers(pattern: str, other: str) -> bool:
    """Every subject ``other`` matches, ``pattern`` matches too (NATS wildcards)."""
    p, o = pattern.split("."), other.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(o) > i
        if i >= len(o) or o[i] == ">" or (token != "*" and (o[i] == "*" or o[i] != token)):
            return False
    return len(p) == len(o)


def overlaps(pattern: str, other: str) -> bool:
    """Some subject matches both ``pattern`` and ``other``."""
    p, o = pattern.split("."), other.split(".")
    for i in range(max(len(p), len(o))):
        a, b = (p[i] if i < len(p) else None), (o[i] if i < len(o) else None)
        if a is None or b is None:
            return False
        if a == ">" or b == ">":
            return True
        if a != "*" and b != "*" and a != b:
            return False
    return True


def _lane_of_pattern(pattern: str, bulk: Sequence[str]) -> Lane | None:
    """bulk when a bulk pattern covers all of ``pattern``, realtime when none touches it,
    None when it is split."""
    if any(covers(b, pattern) for b in bulk):
        return "bulk"
    if not any(overlaps(b, pattern) for b in bulk):
        return "realtime"
    return None


def split_filters(filters: Iterable[str], bulk: Sequence[str]) -> dict[Lane, tuple[str, ...]]:
    """One filter list per lane from a consumer's ``filters`` and the ``bulk`` patterns: no
    subject in both lanes, and every subject of ``filters`` in one of them. A lane with
    nothing gets ``IDLE_SUBJECT``."""
    lanes: dict[Lane, list[str]] = {"realtime": [], "bulk": []}
    for pattern in filters:
        lane = _lane_of_pattern(pattern, bulk)
        if lane is not None:
            lanes[lane].append(pattern)
            continue
        family = CLOSED_FAMILIES.get(pattern)
        if family is None:
            parts = ", ".join(b for b in bulk if overlaps(b, pattern))
            raise LaneConfigError(
                f"bulk subject {parts} covers only part of filter {pattern}, whose event types are not "
                f"all known: mark the whole {pattern} bulk, or none of it"
            )
        for subject in family:
            lanes["bulk" if any(covers(b, subject) for b in bulk) else "realtime"].append(subject)
    return {lane: tuple(dict.fromkeys(found)) or (IDLE_SUBJECT,) for lane, found in lanes.items()}


def drain_seconds(
    backlog: int, requests_per_event: float, budget_per_s: float, realtime_use_per_s: float = 0.0
) -> float:
    """How long a lane's backlog takes at the current budget: ``backlog × requests per event ÷
    (budget per second − what the real-time lane uses of it)``. Infinite when nothing is left
    of the budget; an estimate (events differ in requests, the daily quota is ignored)."""
    left = budget_per_s - realtime_use_per_s
    if backlog <= 0:
        return 0.0
    return backlog * requests_per_event / left if left > 0 else float("inf")


def lane_drain_seconds(
    backlog: Mapping[Lane, int], requests_per_event: float, budget_per_s: float
) -> dict[Lane, float]:
    """Each lane's expected drain time from the lanes' backlogs (messages not yet acked): the
    budget serves real-time first, so the real-time backlog takes ``realtime × requests per
    event ÷ budget`` and the bulk one waits for it too, ``(realtime + bulk) × requests per
    event ÷ budget``. Real-time events that arrive meanwhile lengthen the bulk time (the
    README's ``budget − real-time use``); the gauge cannot know them in advance."""
    realtime = backlog.get("realtime", 0)
    bulk = backlog.get("bulk", 0)
    return {
        "realtime": drain_seconds(realtime, requests_per_event, budget_per_s),
        "bulk": drain_seconds(realtime + bulk, requests_per_event, budget_per_s) if bulk > 0 else 0.0,
    }
