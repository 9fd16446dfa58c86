"""Delivery lanes (issue #18): which work may wait behind a bulk backlog.

``realtime`` is everything an operator or a contact notices within seconds (calls and their
artifacts, conversation messages, opt-outs, DNC, dispositions, agent SMS); ``bulk`` is contact
synchronisation that arrives in bursts (CSV imports, list uploads). Both lanes spend the same
vendor budget; the budget serves ``realtime`` first without starving ``bulk``.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LANES", "Lane"]

Lane = Literal["realtime", "bulk"]
LANES: tuple[Lane, ...] = ("realtime", "bulk")
