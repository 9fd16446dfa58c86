"""The lane of the delivery being handled, for the code far below the consumer that spends a
vendor budget (``services.clients.budget``): the consumer shell sets it per message, the budget
reads it. A context variable, so concurrent deliveries of two lanes in one process never see
each other's lane; outside any delivery it is ``realtime``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from contracts.lanes import Lane

__all__ = ["current_lane", "lane_scope"]

_CURRENT: ContextVar[Lane] = ContextVar("dfm_lane", default="realtime")


def current_lane() -> Lane:
    """The lane of the delivery this task is handling (``realtime`` outside one)."""
    return _CURRENT.get()


@contextmanager
def lane_scope(lane: Lane) -> Iterator[None]:
    """Handle one delivery in ``lane``."""
    token = _CURRENT.set(lane)
    try:
        yield
    finally:
        _CURRENT.reset(token)
